"""The Triton kernels compile for the GPUs they target, on a machine without one: Triton lowers them
ahead of time for sm_90 (H100 / H200) and sm_80 (A100) with its bundled ptxas. Catches what the
interpreter cannot (typing of the compiled language, shared memory beyond the chip's limit) and checks
that bfloat16 on Hopper takes the warpgroup tensor-core path (``wgmma``)."""

import os

import pytest

triton = pytest.importorskip("triton", reason="the triton backend needs the triton package")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("the interpreter replaces the compiled kernels", allow_module_level=True)

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from natten_ops.triton import kernels  # noqa: E402

SHARED_MEMORY = {80: 166912, 90: 232448}  # bytes a block may use (A100, H100)
TENSORS = {"Q", "K", "V", "Out", "dOut", "dQ", "dK", "dV"}
FLOAT32 = {"Lse", "Delta", "partial", "bias"}
KERNELS = {
    "forward": kernels.na2d_forward_kernel,
    "dq": kernels.na2d_backward_dq_kernel,
    "dkv": kernels.na2d_backward_dkv_kernel,
}


def _signature(fn, dtype: str, constants: dict) -> dict:
    def kind(name):
        if name in constants:
            return "constexpr"
        if name in TENSORS or name in FLOAT32:
            return "*" + (dtype if name in TENSORS else "fp32")
        return {"table": "*i32", "scale": "fp32"}.get(name, "i32")

    return {name: kind(name) for name in fn.arg_names}


def _compile(fn, dtype, capability, constants, num_warps=4, num_stages=2):
    source = ASTSource(fn, _signature(fn, dtype, constants), constants)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


@pytest.mark.parametrize("name, dtype, capability, head_dim",
                         [(name, "bf16", 90, 128) for name in KERNELS] + [("forward", "fp32", 80, 32)])
def test_attention_kernels_compile(name, dtype, capability, head_dim):
    """The first autotune config of each kernel with RPB: bfloat16 at the largest head_dim on Hopper, and
    the IEEE float32 path on Ampere."""
    config = KERNELS[name].configs[0]
    constants = dict(BLOCK_D=head_dim, HAS_BIAS=True, TF32=False, **config.kwargs)
    compiled = _compile(KERNELS[name].fn, dtype, capability, constants, config.num_warps, config.num_stages)
    assert compiled.metadata.shared <= SHARED_MEMORY[capability]
    if capability == 90 and dtype == "bf16":
        assert "warp_group_dot" in compiled.asm["ttgir"], "bfloat16 on sm_90 should use wgmma"


def test_rpb_gradient_kernel_compiles():
    constants = dict(BLOCK_D=32, ROWS=16, COLS=16, TH=8, TW=16)
    compiled = _compile(kernels.na2d_backward_rpb_kernel, "bf16", 90, constants)
    assert compiled.metadata.shared <= SHARED_MEMORY[90]
