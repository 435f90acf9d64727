"""Timing and peak-memory measurement shared by the benchmark and throughput commands."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1,
                   min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn()`` over at least ``repeats`` runs after ``warmup`` runs (GPU work synchronised),
    running on until the timed runs add up to ``min_seconds``: a millisecond call's median then rests on
    enough runs to ride out a scheduler tick or a page-fault burst."""
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < repeats or sum(times) < min_seconds:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median of the last ``window`` runs, their spread ``(max - min) / median``, the runs
    timed in all, and whether the spread came within the tolerance."""

    seconds: float
    spread: float
    runs: int
    stable: bool


def stable_seconds(fn: Callable[[], object], device: torch.device, *, window: int = 5, tolerance: float = 0.05,
                   max_runs: int = 30, budget_s: float = 300.0, warmup: int = 1,
                   on_run: Callable[[int, float], None] | None = None) -> Timing:
    """Time ``fn()`` (after ``warmup`` calls) until the last ``window`` runs agree within ``tolerance`` (relative
    spread), or ``max_runs`` runs or ``budget_s`` seconds are spent; ``on_run(run, seconds)`` after each run."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        _sync(device)
        begin = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - begin)
        if on_run is not None:
            on_run(len(times), times[-1])
        last = times[-window:]
        median = statistics.median(last)
        spread = (max(last) - min(last)) / median if median > 0 else 0.0
        stable = len(last) == window and spread <= tolerance
        if stable or len(times) >= max_runs or time.perf_counter() - start > budget_s:
            return Timing(median, spread, len(times), stable)


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Within the block, what native code writes to file descriptor 2 goes to ``/dev/null``: the profiler's
    start/stop lines and its CUDA probing ("gpuGetDeviceCount failed") on machines without a GPU."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes torch allocated while running ``fn()``, beyond what was allocated before.

    CUDA: the caching allocator's peak. CPU: torch's profiler records every allocation and free; they
    are replayed in time order (memory that kernels allocate outside torch is not seen).
    """
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    with native_stderr_silenced(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                          profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak
