"""Where the CPU time goes: one ``torch.profiler`` run of a workload, its time split by model component.

    result = generator_breakdown("ffhq256", batch=1)        # G sampling
    result = training_breakdown("configs/demo.yaml")        # the demo's Lightning training steps
    print(format_table(result))

Forward hooks open a profiler scope (``record_function``) around every module of a known kind (the mapping
network, AdaIN, the attention's qkv/proj linears, the MLP, token up-sampling, ToRGB, FIR filters; D whole). Each
profiled op's *self* time goes to the innermost scope around it; ``natten_ops::`` ops are the attention
kernels wherever they run, and torch's ``Optimizer.step#...`` scopes the optimizer. Backward ops run under
``autograd::engine::evaluate_function`` events whose sequence number is that of the forward op that made
them, so each backward op goes to its forward op's component, in a separate backward column. The training
phases that :mod:`stylenat.training.gan` scopes (R1, bCR, the G_ema update) take everything inside them,
D included. The whole workload runs inside one scope, so Python time between ops counts too (as ``other``):
the rows add up to the profiled wall time. The profiler adds a few microseconds per op, which inflates
components made of many small ops; compare shares, not absolute times, between machines.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from stylenat.profiling import native_stderr_silenced
from stylenat.training.gan import PHASE_SCOPES

SCOPE = "breakdown::"
ATTENTION_KERNELS = "attention: natten_ops kernels"
ATTENTION_LINEARS = "attention: qkv + proj linears"
ATTENTION_LAYOUT = "attention: pad/permute/reshape"
FULL_ATTENTION = "attention: 4x4 full (SDPA)"
MLP = "MLP (fc1, GELU, fc2)"
ADAIN = "AdaIN (norm + style affine)"
TOKEN_UPSAMPLE = "token up-sampling (bilinear, LayerNorm, Linear)"
TO_RGB = "ToRGB (1x1 projection)"
FIR = "FIR up-sampling of the RGB skip"
MAPPING = "mapping network"
DISCRIMINATOR = "D (forward, backward)"
OPTIMIZER = "optimizers (Adam, clipping, zero_grad)"
OTHER = "other (residual adds, Python, Lightning)"
PHASES = {PHASE_SCOPES["R1"]: "R1 step (D forward, double backward, Adam)", PHASE_SCOPES["bCR"]: "bCR (augment, D)",
          PHASE_SCOPES["G_ema"]: "G_ema update"}
"""Profiler scopes of :mod:`stylenat.training.gan` whose whole content is one component."""
_BACKWARD = "autograd::engine::evaluate_function:"


@dataclass(frozen=True)
class Row:
    """One component: milliseconds of forward (or any non-autograd) work and of backward work."""

    category: str
    forward_ms: float
    backward_ms: float

    @property
    def total_ms(self) -> float:
        return self.forward_ms + self.backward_ms


@dataclass(frozen=True)
class Breakdown:
    """The rows (largest first), the wall time of the profiled run, and what was profiled."""

    rows: list[Row]
    wall_ms: float
    title: str

    @property
    def total_ms(self) -> float:
        return sum(row.total_ms for row in self.rows)

    def share(self, category: str) -> float:
        """Fraction of the total spent in ``category`` (0 when absent)."""
        return sum(row.total_ms for row in self.rows if row.category == category) / self.total_ms


def module_categories(model: nn.Module) -> dict[nn.Module, str]:
    """The component of every submodule of ``model`` that has one (the generator's parts; D as a whole)."""
    from stylenat.models.attention import RelativePositionAttention, _GroupedNeighborhoodAttention
    from stylenat.models.discriminator import Discriminator
    from stylenat.models.generator import MappingNetwork, ToRGB, TokenUpsample
    from stylenat.models.layers import AdaIN, FIRFilter2d, Mlp

    kinds = [(MappingNetwork, MAPPING), (AdaIN, ADAIN), (Mlp, MLP), (TokenUpsample, TOKEN_UPSAMPLE),
             (ToRGB, TO_RGB), (FIRFilter2d, FIR), (RelativePositionAttention, FULL_ATTENTION),
             (_GroupedNeighborhoodAttention, ATTENTION_LAYOUT), (Discriminator, DISCRIMINATOR)]
    categories = {}
    for module in model.modules():
        for kind, category in kinds:
            if isinstance(module, kind):
                categories[module] = category
        if isinstance(module, _GroupedNeighborhoodAttention):
            categories[module.qkv] = categories[module.proj] = ATTENTION_LINEARS
    for module in model.modules():
        if isinstance(module, Discriminator):  # its FIR filters are D's
            for part in list(module.modules())[1:]:
                categories.pop(part, None)
    return categories


@contextmanager
def scoped_modules(categories: dict[nn.Module, str]) -> Iterator[None]:
    """Within the block, each module's forward runs inside the profiler scope ``breakdown::<category>``."""
    open_scopes: list[record_function] = []

    def enter(category: str):
        def hook(module, args):
            scope = record_function(SCOPE + category)
            scope.__enter__()
            open_scopes.append(scope)
        return hook

    def leave(module, args, output):
        open_scopes.pop().__exit__(None, None, None)

    handles = []
    for module, category in categories.items():
        handles += [module.register_forward_pre_hook(enter(category)), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def attribute(events) -> list[Row]:
    """Self CPU time of the profiled ``events`` (``prof.events()``) summed per component, largest first."""
    roots = sorted((e for e in events if e.cpu_parent is None), key=lambda e: e.time_range.start)
    forward_category: dict[int, str] = {}  # autograd sequence number -> component of the forward op
    totals: dict[tuple[str, bool], float] = defaultdict(float)
    stack = [(root, OTHER, False, False) for root in reversed(roots)]
    while stack:  # depth first, in time order: forward ops are seen before their backward
        event, category, phase, backward = stack.pop()
        name = event.name
        if name in PHASES:
            category, phase = PHASES[name], True
        elif not phase:
            if name.startswith(SCOPE):
                category = name[len(SCOPE):]
            elif name.startswith("natten_ops::"):
                category = ATTENTION_KERNELS
            elif name.startswith(("Optimizer.", "aten::_foreach_norm")) and category == OTHER:
                category = OPTIMIZER
            elif name.startswith(_BACKWARD):
                category = forward_category.get(event.sequence_nr, OTHER)
        if name.startswith(_BACKWARD):
            backward = True
        elif not backward and event.sequence_nr >= 0:
            forward_category.setdefault(event.sequence_nr, category)
        totals[category, backward] += event.self_cpu_time_total
        stack.extend((child, category, phase, backward)
                     for child in sorted(event.cpu_children, key=lambda e: e.time_range.start, reverse=True))
    categories = {category for category, _ in totals}
    rows = [Row(c, totals[c, False] / 1e3, totals[c, True] / 1e3) for c in categories]
    return sorted(rows, key=lambda row: row.total_ms, reverse=True)


@contextmanager
def profiled(modules: list[nn.Module]) -> Iterator[Callable[[], list[Row]]]:
    """Profile the block with the components of ``modules`` scoped; yields a function that, after the block,
    returns the rows (:func:`attribute`)."""
    categories = {}
    for model in modules:
        categories.update(module_categories(model))
    with scoped_modules(categories), native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function(SCOPE + OTHER):  # Python time between the ops counts too
            yield lambda: attribute(prof.events())


def profile_breakdown(run: Callable[[], object], modules: list[nn.Module], title: str) -> Breakdown:
    """Profile one call of ``run`` with the components of ``modules`` scoped; its rows and wall time."""
    with profiled(modules) as rows:
        start = time.perf_counter()
        run()
        wall = time.perf_counter() - start
    return Breakdown(rows(), wall * 1e3, title)


def generator_breakdown(preset: str, *, batch: int = 1, backend: str = "cpu", iterations: int = 1,
                        seed: int = 0) -> Breakdown:
    """G sampling (``torch.no_grad``, eval mode) of ``iterations`` batches of ``batch`` images, after one
    unprofiled warm-up batch."""
    from stylenat.models import create_generator

    torch.manual_seed(seed)
    G = create_generator(preset, backend=backend).eval()

    def sample():
        with torch.no_grad():
            for _ in range(iterations):
                G(torch.randn(batch, G.z_dim))

    with torch.no_grad():
        G(torch.randn(batch, G.z_dim))
    return profile_breakdown(sample, [G], f"{preset} sampling, batch {batch}, {iterations} batch(es), "
                                          f"{torch.get_num_threads()} thread(s), backend {backend}")


def training_breakdown(config: str | Path, *, steps: int | None = None, warmup: int = 1,
                       overrides: dict | None = None) -> Breakdown:
    """Profile ``steps`` consecutive training steps (default: ``r1_interval``, so lazy R1 counts once, as in
    a run) of the GAN config ``config`` (its ``model`` and ``data`` sections; ``overrides`` update the
    model's arguments) after ``warmup`` unprofiled steps, through a Lightning Trainer on the CPU, without the
    config's callbacks and logger."""
    import yaml

    from stylenat.data import StyleNATDataModule
    from stylenat.training.gan import StyleNATGAN

    path = Path(config)
    if not path.is_file():
        raise ValueError(f"config: no such file {str(path)!r}")
    sections = yaml.safe_load(path.read_text())
    gan = "stylenat.training.gan.StyleNATGAN"
    if not (isinstance(sections, dict) and all(isinstance(sections.get(key), dict) for key in ("model", "data"))
            and sections["model"].get("class_path") == gan and "init_args" in sections["data"]):
        raise ValueError(f"config: {str(path)!r} is not a GAN config (model.class_path {gan} and data.init_args)")
    model_args = {**sections["model"]["init_args"], "image_snapshot_kimg": None, "export_snapshot_kimg": None,
                  **(overrides or {})}
    torch.manual_seed(sections.get("seed_everything", 0))
    model = StyleNATGAN(**model_args)
    steps = steps or (model.hparams.r1_interval if model.hparams.r1_gamma > 0 else 1)
    recorder = _ProfiledSteps(first=warmup, count=steps, modules=[model.G, model.D])
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2 * (warmup + steps), default_root_dir=root,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, use_distributed_sampler=False, callbacks=[recorder])
        data = {**sections["data"]["init_args"], "resolution": model.G.size}  # linked as ``stylenat fit`` does
        trainer.fit(model, datamodule=StyleNATDataModule(**data))
    if not recorder.rows:
        raise ValueError(f"config: training stopped before step {warmup + steps} (model.total_kimg is "
                         f"{model.hparams.total_kimg:g}); profile fewer steps")
    return Breakdown(recorder.rows, recorder.wall_ms,
                     f"{path.name} training, {steps} step(s) of batch {data.get('batch_size')}, "
                     f"{torch.get_num_threads()} thread(s)")


class _ProfiledSteps(L.Callback):
    """Profiles the training batches ``first`` .. ``first + count - 1`` as one run."""

    def __init__(self, first: int, count: int, modules: list[nn.Module]):
        self.first, self.count, self.modules = first, count, modules
        self.rows: list[Row] = []
        self.wall_ms = 0.0
        self._stack = ExitStack()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.first:
            self._rows = self._stack.enter_context(profiled(self.modules))
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.first + self.count - 1:
            self.wall_ms = (time.perf_counter() - self._start) * 1e3
            self._stack.close()
            self.rows = self._rows()


def format_table(breakdown: Breakdown) -> str:
    """A Markdown table: component, forward ms, backward ms, total ms, share; then the totals."""
    lines = [f"# {breakdown.title}", "| component | forward ms | backward ms | total ms | share |",
             "|---|---|---|---|---|"]
    total = breakdown.total_ms
    for row in breakdown.rows:
        lines.append(f"| {row.category} | {row.forward_ms:.1f} | {row.backward_ms:.1f} | {row.total_ms:.1f} | "
                     f"{row.total_ms / total:.1%} |")
    forward = sum(row.forward_ms for row in breakdown.rows)
    lines.append(f"| **all** | {forward:.1f} | {total - forward:.1f} | {total:.1f} | 100% |")
    lines.append(f"(profiled wall time {breakdown.wall_ms:.1f} ms)")
    return "\n".join(lines)
