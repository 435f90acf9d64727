"""Benchmark natten_ops backends on the StyleNAT attention shapes, in one process.

    python scripts/bench_natten.py                  # CPU: cpu vs flex (compiled) vs reference
    python scripts/bench_natten.py --quick          # fewer shapes and repeats
    python scripts/bench_natten.py --device cuda --dtype bfloat16,float32 --batch-scale 2 --highres

Prints, per shape (B, heads, H=W, head_dim, kernel, dilation): forward and forward+backward time (median
of --repeats after warm-up, and of at least half a second of runs), peak memory, achieved GFLOP/s
(forward counts 4*B*heads*H*W*k*k*D flops: q.k and attn.v, a multiply and an add each; forward+backward
3.5 times that), on CUDA the TFLOP/s of every backend, and the speed-ups of the first backend over the others.
Ratios are measured in this run, on this machine; they are the figures the README quotes. On the CPU the
first backend is also timed on one thread (``torch.set_num_threads(1)``): the "1-thread ms" column and the
N-thread speed-up show that the kernels use every intra-op thread (``--no-scaling`` skips it); the header
names the thread count and the CPU kernels' build (AVX-512 tiled or portable, ``NATTEN_OPS_PORTABLE=1``). The pseudo-
backend ``sdpa`` (default on CUDA) is dense ``scaled_dot_product_attention`` over the same H*W tokens:
not neighborhood attention, a roofline for what a tuned attention kernel reaches on this device (its
TFLOP/s count the dense 4*B*heads*(H*W)^2*D flops). On CUDA the default backends are triton, cuda, flex
(compiled) and sdpa; ``triton`` on CPU tensors would run in Triton's interpreter and is not timed.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F

import natten_ops
from stylenat.profiling import median_seconds, peak_memory_bytes

MIN_SECONDS = 0.5  # each median rests on at least this much timed work (hundreds of runs for a millisecond call)
STYLENAT_SHAPES = [  # (B, heads, H=W, head_dim, kernel, dilation): the generator's Hydra-NA stages
    (4, 16, 16, 32, 7, 2),
    (4, 16, 32, 32, 7, 4),
    (2, 16, 64, 32, 7, 8),
    (1, 8, 128, 32, 7, 16),
    (1, 4, 256, 32, 7, 32),
]
HIGHRES_SHAPES = [  # the extra stages of the 1024 px generator (4 heads of 16 and 8 channels)
    (1, 4, 512, 16, 7, 64),
    (1, 4, 1024, 8, 7, 128),
]


def shapes(quick: bool, scale_batch: int = 1, highres: bool = False, sizes=None):
    rows = []
    for B, h, n, D, k, d in STYLENAT_SHAPES + (HIGHRES_SHAPES if highres else []):
        if sizes is None or n in sizes:
            rows.append((B * scale_batch, h, n, D, k, d))
            rows.append((B * scale_batch, h, n, D, k, 1))
    return rows[::3] if quick else rows


def run_case(backend: str, shape, device, dtype, repeats: int, backward: bool):
    B, heads, n, D, k, d = shape
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, key, v = (torch.randn(B, heads, n, n, D, generator=gen, dtype=dtype).to(device) for _ in range(3))
    rpb = (torch.randn(heads, 2 * k - 1, 2 * k - 1, generator=gen, dtype=dtype) * 0.02).to(device)
    if backward:
        for t in (q, key, v, rpb):
            t.requires_grad_(True)

    def step():
        if backend == "sdpa":  # dense attention over all H*W tokens, the roofline
            out = F.scaled_dot_product_attention(*(t.flatten(2, 3) for t in (q, key, v)))
        else:
            out = natten_ops.na2d(q, key, v, k, d, rpb=rpb, backend=backend)
        if backward:
            out.sum().backward()
        return out

    with torch.set_grad_enabled(backward):
        seconds = median_seconds(step, device, repeats, warmup=2, min_seconds=MIN_SECONDS)
        try:
            memory = peak_memory_bytes(step, device)
        except MemoryError:  # the CPU profiler's event list can outgrow memory on the largest shapes
            memory = None
        return seconds, memory


@contextlib.contextmanager
def threads(count: int):
    """Runs the block with ``count`` intra-op threads."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def cpu_build() -> str:
    """Which CPU kernels run: the build's name and its kernel variant."""
    from natten_ops import _build

    try:
        return f"{_build.cpu_extension().name} ({_build.load_cpu().kernel_variant()})"
    except _build.BuildError as err:
        return f"unavailable: {err}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32",
                        help="float32, float16 or bfloat16, or a comma list: one table per dtype")
    parser.add_argument("--backends", default=None, help="comma list; first is the one compared (default cpu/cuda first)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch-scale", type=int, default=1, help="multiply every batch size (GPU: use 2 for B=8 at 256 px)")
    parser.add_argument("--highres", action="store_true", help="add the 512 and 1024 px stages of the 1024 px generator")
    parser.add_argument("--sizes", default=None, help="comma list of H=W sizes to run (default: all)")
    parser.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=True,
                        help="CPU: also time the first backend on 1 thread (default: on)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtypes = [getattr(torch, name) for name in args.dtype.split(",")]
    if not all(dtype in (torch.float32, torch.float16, torch.bfloat16) for dtype in dtypes):
        parser.error(f"--dtype takes float32, float16, bfloat16 or a comma list of them, got {args.dtype!r}")
    backends = (args.backends.split(",") if args.backends else
                (["triton", "cuda", "flex", "sdpa"] if device.type == "cuda" else ["cpu", "flex", "reference"]))
    for dtype in dtypes:
        print(f"# natten_ops {natten_ops.__version__}, torch {torch.__version__}, device {device}"
              f" ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})"
              f", dtype {str(dtype).removeprefix('torch.')}" + (f", CPU kernels {cpu_build()}" if device.type == "cpu" else ""))
        table(backends, device, dtype, args)


def table(backends, device, dtype, args):
    """One markdown table: every shape, forward and forward+backward, every backend."""
    gpu = device.type == "cuda"
    scaling = args.scaling and device.type == "cpu"
    header = ["B", "heads", "H=W", "D", "k", "d", "pass"] + [f"{b} ms" for b in backends] + \
             [f"{b} MB" for b in backends] + [f"{backends[0]} GFLOP/s"] + \
             ([f"{b} TFLOP/s" for b in backends] if gpu else []) + [f"x vs {b}" for b in backends[1:]] + \
             ([f"{backends[0]} 1-thread ms", f"{torch.get_num_threads()}-thread speed-up"] if scaling else [])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    sizes = {int(n) for n in args.sizes.split(",")} if args.sizes else None
    for shape in shapes(args.quick, args.batch_scale, args.highres, sizes):
        B, heads, n, D, k, d = shape
        flops = 4 * B * heads * n * n * k * k * D
        for backward in (False, True):
            cells = []
            for backend in backends:
                reason = None if backend == "sdpa" else natten_ops.unavailable_reason(
                    backend, "na2d", device, dtype, needs_grad=backward, head_dim=D)
                if backend == "triton" and device.type == "cpu" and reason is None:
                    reason = "Triton's interpreter is not timed"
                if reason is not None:
                    cells.append(None)
                    continue
                try:
                    cells.append(run_case(backend, shape, device, dtype, args.repeats, backward))
                except (RuntimeError, MemoryError) as err:  # e.g. out of memory for the reference
                    print(f"# {backend} failed on {shape}: {(str(err) or type(err).__name__).splitlines()[0]}")
                    cells.append(None)
            passes = 3.5 if backward else 1
            ms = [f"{c[0] * 1e3:.2f}" if c else "-" for c in cells]
            mb = [f"{c[1] / 2**20:.0f}" if c and c[1] is not None else "-" for c in cells]
            gflops = f"{flops * passes / cells[0][0] / 1e9:.1f}" if cells[0] else "-"
            tflops = [f"{(dense_flops(shape) if b == 'sdpa' else flops) * passes / c[0] / 1e12:.1f}" if c else "-"
                      for b, c in zip(backends, cells)] if gpu else []
            ratios = [f"{c[0] / cells[0][0]:.1f}" if c and cells[0] else "-" for c in cells[1:]]
            if scaling and cells[0]:
                with threads(1):
                    one = run_case(backends[0], shape, device, dtype, args.repeats, backward)[0]
                ratios += [f"{one * 1e3:.2f}", f"{one / cells[0][0]:.2f}"]
            elif scaling:
                ratios += ["-", "-"]
            row = [B, heads, n, D, k, d, "fwd+bwd" if backward else "fwd", *ms, *mb, gflops, *tflops, *ratios]
            print("| " + " | ".join(str(x) for x in row) + " |", flush=True)


def dense_flops(shape) -> int:
    """Forward flops of dense attention over all H*W tokens (the sdpa roofline)."""
    B, heads, n, D, _, _ = shape
    return 4 * B * heads * (n * n) ** 2 * D

if __name__ == "__main__":
    main()
