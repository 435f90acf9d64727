"""The models compile and export over natten_ops' custom ops: ``torch.compile(fullgraph=True)`` traces the
generator, the discriminator and the NAT / DiNAT classifiers in one graph each, compiled outputs and
gradients equal eager ones, ``torch.export`` of a NAT classifier runs, and (on a GPU) the generator is
captured in CUDA graphs.

Tolerances: the compiled graphs run the same natten_ops kernels; only the surrounding PyTorch ops are
fused or reordered, so float32 results agree to rounding (atol 1e-5 / rtol 1e-4 on outputs of magnitude
~1; gradients 1e-4).
"""

import copy

import pytest
import torch

from stylenat.models import create_discriminator, create_generator, create_model

OUT_TOL = dict(atol=1e-5, rtol=1e-4)
GRAD_TOL = dict(atol=1e-4, rtol=1e-4)


def _nat(name="nat_mini", size=32, **overrides):
    return create_model(name, num_classes=10, img_size=size, depths=(1, 1, 2, 1), backend="cpu", **overrides)


MODELS = {  # name -> (factory, input factory)
    "generator": (lambda: create_generator("demo", backend="cpu", style_mixing_prob=0.5),
                  lambda: torch.randn(2, 128)),
    "discriminator": (lambda: create_discriminator("demo"), lambda: torch.randn(2, 3, 32, 32)),
    "nat": (lambda: _nat(), lambda: torch.randn(2, 3, 32, 32)),
    "dinat": (lambda: _nat("dinat_mini", size=64, dilations="max"), lambda: torch.randn(2, 3, 64, 64)),
}


def _model(name, train=False):
    torch.manual_seed(0)
    factory, inputs = MODELS[name]
    return factory().train(train), inputs()


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", MODELS)
def test_models_trace_in_one_graph(name, train):
    model, x = _model(name, train)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


def _attention_ops(graph_module) -> set[str]:
    return {str(node.target) for node in graph_module.graph.nodes if "natten_ops" in str(node.target)}


@pytest.mark.parametrize("name", MODELS)
def test_compiled_outputs_and_gradients_equal_eager(name):
    """AOTAutograd (the tracing and autograd of torch.compile, without code generation) on the forward
    and backward graphs of a training step, against an identical eager copy (training-mode state such as
    spectral norm's power iteration and G's w_avg moves once in each); the generator trains with style
    mixing, drawn in the graph from the seeded RNG."""
    model, x = _model(name, train=True)
    twin = copy.deepcopy(model)
    results = []
    for run, module in ((model, model), (torch.compile(twin, fullgraph=True, backend="aot_eager"), twin)):
        torch.manual_seed(1)
        out = run(x)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None},
                        dict(module.named_buffers())))
    (expected, expected_grads, expected_buffers), (got, grads, buffers) = results
    torch.testing.assert_close(got, expected, **OUT_TOL)
    assert grads.keys() == expected_grads.keys() and grads
    for key in expected_grads:
        torch.testing.assert_close(grads[key], expected_grads[key], **GRAD_TOL, msg=lambda m: f"{key}: {m}")
    for key in expected_buffers:
        torch.testing.assert_close(buffers[key], expected_buffers[key], **OUT_TOL, msg=lambda m: f"{key}: {m}")


@pytest.mark.slow
def test_inductor_compiled_generator_equals_eager():
    """The default torch.compile backend (inductor: generated C++ around the natten_ops kernels)."""
    model, z = _model("generator")
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(z), model(z), **OUT_TOL)


def test_export_of_a_nat_classifier_equals_eager():
    model, x = _model("nat")
    exported = torch.export.export(model, (x,))
    assert _attention_ops(exported.graph_module) == {"natten_ops.cpu_na2d_forward.default"}
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), **OUT_TOL)
        other = torch.randn_like(x)  # the program is not specialised to the example's values
        torch.testing.assert_close(exported.module()(other), model(other), **OUT_TOL)


def _cuda_generator(backend):
    torch.manual_seed(0)
    model = create_generator("demo", backend=backend).cuda().eval()
    return model, torch.randn(2, model.z_dim, device="cuda")


@pytest.mark.cuda
@torch.no_grad()
def test_cuda_kernels_record_in_a_cuda_graph():
    """The eager generator over the cuda kernels records in a CUDA graph (a host sync or a host-to-device
    copy in an op wrapper would abort the capture) and replays with new latents."""
    model, z = _cuda_generator("cuda")
    model(z)  # warm-up: builds the kernels
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = model(z)
    z.copy_(torch.randn_like(z))
    graph.replay()
    torch.testing.assert_close(captured, model(z), **OUT_TOL)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "flex"])
@torch.no_grad()
def test_generator_compiles_with_cuda_graphs(backend):
    """mode="reduce-overhead" compiles the generator in one graph and runs it as a CUDA graph (inductor
    skips CUDA graphs for graphs it cannot capture, and counts the skip)."""
    from torch._dynamo.utils import counters

    model, z = _cuda_generator(backend)
    expected = model(z)
    counters.clear()
    compiled = torch.compile(model, fullgraph=True, mode="reduce-overhead")
    for _ in range(3):  # warm-up, record, replay
        out = compiled(z)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-3)
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
