"""NaN and Inf are never hidden: every CPU-runnable backend propagates them as the reference does.

For NaN / +-Inf placed in q, k, v, the scale and the RPB (one entry, or a whole -inf row of the table),
each backend's output and every gradient must have exactly the reference's NaN positions and
+-Inf positions, and agree with it elsewhere (float64: 1e-9, float32: 1e-3; computed in the backend's
dtype, compared with the float64 reference). Backends: ``cpu`` (the AVX-512 tiled kernels in float32 on
processors that have AVX-512, else the portable ones), ``cpu-portable`` (the portable build, as
``NATTEN_OPS_PORTABLE=1`` selects), ``cuda-harness`` (the CUDA kernels' element math on the CPU) and
``flex`` (forward only and float32: torch has no flex_attention backward, nor float64, on the CPU).
"""

import pytest
import torch

import natten_ops
from natten_ops import HeadGroup, _build, functional
from natten_ops.custom_ops import CompiledBackend

B, HEADS, H, W, D = 1, 2, 9, 10, 16
KERNEL, DILATION = (3, 5), (2, 1)
SLOTS = KERNEL[0] * KERNEL[1]
NAN, INF = float("nan"), float("inf")
TOLERANCE = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-3)}

EXTRA_BACKENDS = {
    "cpu-portable": lambda: _build.PORTABLE_CPU_EXTENSION,
    "cuda-harness": lambda: _build.CUDA_HARNESS_EXTENSION,
}
GRAD_BACKENDS = ("cpu", "cpu-portable", "cuda-harness")


@pytest.fixture(autouse=True)
def extra_backends(monkeypatch):
    """Registers the portable CPU build and the CUDA harness as CPU backends for the test."""
    monkeypatch.setattr(functional, "BACKENDS", functional.BACKENDS + tuple(EXTRA_BACKENDS))
    for name, extension in EXTRA_BACKENDS.items():
        monkeypatch.setitem(functional._REGISTRY, name,
                            CompiledBackend(name, "cpu", extension, (torch.float32, torch.float64)))


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, HEADS, H, W, D, generator=gen, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(HEADS, 2 * KERNEL[0] - 1, 2 * KERNEL[1] - 1, generator=gen, dtype=torch.float64)
    attn = torch.softmax(torch.randn(B, HEADS, H, W, SLOTS, generator=gen, dtype=torch.float64), -1)  # na2d_av
    return dict(q=q, k=k, v=v, rpb=rpb, attn=attn, scale=D ** -0.5)


def poke(name, index, value):
    """A case: ``inputs()`` with ``name[index] = value``."""
    def make():
        x = inputs()
        x[name][index] = value
        return x
    return make


def with_scale(value):
    def make():
        return {**inputs(), "scale": value}
    return make


def neg_inf_bias_row():
    """Every bias entry of head 0 is -inf: every logit of head 0 is -inf, the reference gives NaN there."""
    x = inputs()
    x["rpb"][0] = -INF
    return x


def neg_inf_bias_entry():
    """One relative position is masked (-inf): it weighs exactly 0, the rest stays finite."""
    x = inputs()
    x["rpb"][1, 2, 4] = -INF
    x["v"][0, 1, 4, 4] = INF  # with an Inf value at a key that some queries see through the masked entry
    return x


FUSED_CASES = {
    "nan_q": poke("q", (0, 0, 4, 5, 3), NAN),
    "inf_q": poke("q", (0, 1, 0, 9, 0), INF),
    "neg_inf_q": poke("q", (0, 0, 8, 0, 15), -INF),
    "nan_k": poke("k", (0, 1, 3, 3, 7), NAN),
    "inf_k": poke("k", (0, 0, 4, 9, 2), INF),
    "nan_v": poke("v", (0, 0, 5, 5, 1), NAN),
    "inf_v": poke("v", (0, 1, 2, 0, 8), INF),
    "neg_inf_v": poke("v", (0, 0, 0, 0, 0), -INF),
    "nan_rpb": poke("rpb", (0, 2, 4), NAN),
    "inf_rpb": poke("rpb", (1, 1, 3), INF),
    "neg_inf_rpb_entry": neg_inf_bias_entry,
    "neg_inf_rpb_row": neg_inf_bias_row,
    "nan_scale": with_scale(NAN),
    "inf_scale": with_scale(INF),
}


def fused(backend, x, dtype, grads=True):
    """Output and gradients (q, k, v, rpb) of sum(out * weights) as float64 CPU tensors."""
    leaves = [x[n].to(dtype).requires_grad_(grads) for n in ("q", "k", "v", "rpb")]
    with torch.set_grad_enabled(grads):
        out = natten_ops.na2d_grouped(*leaves[:3], [HeadGroup(HEADS, KERNEL, DILATION, leaves[3])],
                                      scale=x["scale"], backend=backend)
        results = [out]
        if grads:
            weights = torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape)
            results += torch.autograd.grad((out * weights).sum(), leaves)
    return [t.detach().double() for t in results]


def assert_same_specials(got, expected, dtype, what):
    """Identical NaN and +-Inf positions, the finite values within the dtype's tolerance."""
    assert torch.equal(got.isnan(), expected.isnan()), (
        f"{what}: NaN at {got.isnan().sum()} positions, the reference at {expected.isnan().sum()}")
    for sign in (INF, -INF):
        assert torch.equal(got == sign, expected == sign), f"{what}: {sign} positions differ from the reference"
    finite = expected.isfinite()
    torch.testing.assert_close(got[finite], expected[finite], **TOLERANCE[dtype], msg=what)


@pytest.mark.parametrize("case", FUSED_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", GRAD_BACKENDS)
def test_fused_specials_match_reference(backend, dtype, case):
    x = FUSED_CASES[case]()
    expected = fused("reference", x, torch.float64)
    assert any(t.isnan().any() or t.isinf().any() for t in expected)  # the case is special
    for name, got, want in zip(("out", "dq", "dk", "dv", "drpb"), fused(backend, x, dtype), expected):
        assert_same_specials(got, want, dtype, f"{backend} {dtype} {case} {name}")


@pytest.mark.parametrize("case", FUSED_CASES)
def test_flex_forward_specials_match_reference(case):
    """flex on the CPU (float32: it takes no float64) hands non-finite inputs to the reference."""
    x = FUSED_CASES[case]()
    expected = fused("reference", x, torch.float64, grads=False)[0]
    got = fused("flex", x, torch.float32, grads=False)[0]
    assert_same_specials(got, expected, torch.float32, f"flex {case} out")


UNFUSED_CASES = {
    "nan_q": poke("q", (0, 0, 4, 5, 3), NAN),
    "inf_q": poke("q", (0, 1, 0, 9, 0), INF),
    "nan_k": poke("k", (0, 1, 3, 3, 7), NAN),
    "neg_inf_k": poke("k", (0, 0, 4, 9, 2), -INF),
    "nan_rpb": poke("rpb", (0, 2, 4), NAN),
    "inf_rpb": poke("rpb", (1, 1, 3), INF),
    "nan_v": poke("v", (0, 0, 5, 5, 1), NAN),
    "inf_v": poke("v", (0, 1, 2, 0, 8), INF),
    "nan_attn": poke("attn", (0, 1, 6, 2, 4), NAN),
    "inf_attn": poke("attn", (0, 0, 1, 1, 0), -INF),
}


def unfused(backend, x, dtype):
    """na2d_qk logits, na2d_av output and the gradients (q, k, rpb, attn, v) of sum(weights * both)."""
    leaves = [x[n].to(dtype).requires_grad_() for n in ("q", "k", "rpb", "attn", "v")]
    logits = natten_ops.na2d_qk(leaves[0], leaves[1], KERNEL, DILATION, rpb=leaves[2], backend=backend)
    out = natten_ops.na2d_av(leaves[3], leaves[4], KERNEL, DILATION, backend=backend)
    loss = (logits * torch.linspace(-1, 1, logits.numel(), dtype=dtype).reshape(logits.shape)).sum() + \
        (out * torch.linspace(1, 2, out.numel(), dtype=dtype).reshape(out.shape)).sum()
    return [t.detach().double() for t in (logits, out, *torch.autograd.grad(loss, leaves))]


@pytest.mark.parametrize("case", UNFUSED_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", GRAD_BACKENDS)
def test_unfused_specials_match_reference(backend, dtype, case):
    x = UNFUSED_CASES[case]()
    expected = unfused("reference", x, torch.float64)
    names = ("logits", "out", "dq", "dk", "drpb", "dattn", "dv")
    for name, got, want in zip(names, unfused(backend, x, dtype), expected):
        assert_same_specials(got, want, dtype, f"{backend} {dtype} {case} {name}")
