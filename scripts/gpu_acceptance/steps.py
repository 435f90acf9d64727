"""The steps, in order: each a function ``step_x(run, step)`` that runs commands through ``run`` (held to the
step's limit) and records checks, tables and data on ``step``; :func:`run_all` gives each step its limit
within the budget and keeps the report current."""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

from gpu_acceptance.parse import (BACKEND_ORDER, failed_backends, is_number, parse_bench, parse_junit,
                                  parse_pytest_lines, rank_backends)
from gpu_acceptance.records import PY, REPO, Interrupted, Profile, Run, StepRecord

def step_env(run: Run, step: StepRecord) -> None:
    info = run.probe(step, "environment probe", "env")
    if info is None:
        return
    if run.commit:  # given on the command line: a device machine's copy of the checkout may have no .git
        info["commit"] = run.commit
    step.data.update(info)
    gpu = info.get("gpu")
    if gpu:
        step.passed("GPU", f"{gpu['name']}, {gpu['memory_gib']} GiB, compute capability "
                           f"{'.'.join(map(str, gpu['capability']))}, {gpu['multiprocessors']} SMs, driver "
                           f"{info.get('driver') or '?'}")
    elif run.dry_run:
        step.skip("GPU", "no GPU (dry run: CUDA hidden)")
    else:
        step.fail("GPU", "no GPU visible to torch (torch.cuda.is_available() is False); on a machine without "
                         "one, run with --dry-run")
    step.passed("versions", ", ".join(f"{k} {info.get(k) or '-'}" for k in
                                      ("python", "torch", "torch_cuda", "triton", "lightning", "nvcc")))
    step.passed("commit", info.get("commit") or "unknown")
    for part, error in info["errors"].items():
        step.fail(f"probe: {part}", error)
    missing = info.get("requirements_missing")
    if missing is not None:
        step.expect("packages", not missing,
                    "every requirement of pyproject.toml (and its test extra) is installed" if not missing else
                    "missing or mismatched: " + "; ".join(missing) + ". Carry their wheels (scripts/gpu_wheels.sh, "
                    "README 'GPU acceptance').")
    if "backends" in info:  # the parts that other work adds, found or not
        if "triton" in info["backends"]:
            step.passed("triton backend", f"natten_ops.BACKENDS = {tuple(info['backends'])}")
        else:
            step.skip("triton backend", "not in this checkout (natten_ops.BACKENDS has no 'triton')")
    if "throughput_compile" in info:
        if info["throughput_compile"]:
            step.passed("stylenat throughput --compile", "present")
        else:
            step.skip("stylenat throughput --compile", "not in this checkout")
        if info["gan_compile"] is not None:
            step.passed("StyleNATGAN(compile=...)", f"present, default {info['gan_compile']}")
        else:
            step.skip("StyleNATGAN(compile=...)", "not in this checkout")


def step_build(run: Run, step: StepRecord) -> None:
    env = dict(run.env)
    if run.has_gpu:
        major, minor = run.data("env", "gpu")["capability"]
        env.update(TORCH_CUDA_ARCH_LIST=f"{major}.{minor}", MAX_JOBS="16", NATTEN_OPS_VERBOSE="1")
        run.env["TORCH_CUDA_ARCH_LIST"] = env["TORCH_CUDA_ARCH_LIST"]  # later steps find the same build
        built = run.probe(step, "CUDA kernels", "build", "cuda", env=env)
        what = f"CUDA kernels (sm_{major}{minor}, MAX_JOBS=16)"
    else:
        step.skip("CUDA kernels", "no GPU")
        built = run.probe(step, "CPU kernels", "build", "cpu", env=env)  # what the rehearsal's steps use
        what = "CPU kernels"
    if built is None:
        return
    step.passed(what, f"{built['seconds']:.0f} s{' (cached)' if built['cached'] else ''}: {built['module']}")
    step.data.update(seconds=built["seconds"], backends=built["backends"])
    lines = [f"| backend | na2d forward + backward, {run.profile.dtypes[0]}, head_dim 32 |", "|---|---|"]
    lines += [f"| {name} | {reason or 'available'} |" for name, reason in built["backends"].items()]
    step.tables.append({"title": f"natten_ops backends on {run.profile.device}", "lines": lines})


def candidate_backends(run: Run) -> list[str]:
    """The backends that can train on this device, in BACKEND_ORDER (all but the CPU's on a GPU)."""
    reasons = run.data("build", "backends")
    if reasons is None:  # the build step did not say: every backend the checkout names, the others report
        names = run.data("env", "backends") or list(BACKEND_ORDER)
        names = [n for n in names if (n == "cpu") == (run.profile.device == "cpu") or n == "reference"]
    else:
        names = [n for n, reason in reasons.items() if reason is None]
    order = {name: i for i, name in enumerate(("cpu",) + BACKEND_ORDER)}
    return sorted(names, key=lambda n: order.get(n, len(order)))


def step_tests(run: Run, step: StepRecord) -> None:
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                   if re.search(r"mark\.cuda\b", p.read_text(encoding="utf-8", errors="replace")))
    if not files:
        step.fail("cuda-marked tests", "no test file under tests/ uses pytest.mark.cuda")
        return
    junit = run.work / "junit-cuda.xml"
    junit.unlink(missing_ok=True)
    result = run.command(step, "pytest -m cuda", [PY, "-m", "pytest", "-m", "cuda", "-v", "-rfE", "-p",
                                                  "no:cacheprovider", "--continue-on-collection-errors",
                                                  f"--junitxml={junit}", "--timeout=60", *files],
                         check=False)
    if result is None:
        return
    cases = parse_junit(junit) if junit.exists() else parse_pytest_lines(result.output)  # killed: no JUnit
    counts = {status: sum(c["status"] == status for c in cases) for status in ("passed", "failed", "skipped")}
    step.data.update(files=files, counts=counts, failed_backends=failed_backends(cases, run.data("env", "backends")))
    step.data["complete"] = result.rc is not None and junit.exists()
    summary = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped in {len(files)} files"
    if not cases:
        if result.rc is not None:
            step.fail("pytest -m cuda", f"exit code {result.rc} and no JUnit report", result.tail())
        return
    for case in cases:
        if case["status"] == "failed":
            step.fail(case["id"], case["message"], case["text"])
    if result.rc == 0:
        step.passed("pytest -m cuda", summary)
    elif result.rc is not None and counts["failed"] == 0:
        step.fail("pytest -m cuda", f"exit code {result.rc} ({summary})", result.tail())
    else:  # failures are listed one by one above; a kill is recorded by Run.command
        step.checks.append({"name": "pytest -m cuda", "status": "counts", "detail": summary})
    if not run.has_gpu and counts["passed"] == counts["failed"] == 0:
        step.skipped = f"no GPU ({summary}: the rehearsal collected and ran them)"


def step_bench(run: Run, step: StepRecord) -> None:
    backends = candidate_backends(run)
    compiled = [b for b in backends if b == "flex"]  # torch.compile per shape: a subset of the shapes
    eager = [b for b in backends if b not in compiled and b != "reference"]
    step.skip("reference", "not timed: the fallback of last resort, slow and memory-hungry")
    if run.profile.device == "cuda":
        eager.append("sdpa")
    first, *others = run.profile.bench_dtypes
    rows = bench(run, step, f"{first}, every shape", eager, first, run.profile.bench_args)
    if not compiled:
        step.skip(f"{first}, flex", "dry run: flex compiles for minutes on a CPU and has no CPU backward"
                  if run.dry_run else "flex cannot run here (see the build step)")
    elif step.time_left() < 30:
        step.skip(f"{first}, flex", f"{step.time_left():.0f} s left in the step")
    else:
        rows += bench(run, step, f"{first}, flex on a subset (one compile per shape)", compiled, first,
                      run.profile.bench_flex_args)
    for dtype in others:  # rows measured before the step's limit are kept
        if step.time_left() < 30:
            step.skip(f"{dtype}, every shape", f"{step.time_left():.0f} s left in the step")
        else:
            rows += bench(run, step, f"{dtype}, every shape", eager, dtype, run.profile.bench_args)
    step.data["rows"] = rows
    step.data["ranking"] = rank_backends(rows, run.data("tests", "failed_backends", []))
    if not rows:
        step.fail("benchmark", "no benchmark row was measured")


def bench(run: Run, step: StepRecord, what: str, backends: list[str], dtype: str, extra: tuple[str, ...]) -> list[dict]:
    argv = [PY, "scripts/bench_natten.py", "--device", run.profile.device, "--dtype", dtype,
            "--backends", ",".join(backends), *extra]
    result = run.command(step, what, argv)
    if result is None:
        return []
    rows = parse_bench(result.output, dtype)
    table = [line for line in result.output.splitlines() if line.startswith("|")]
    if table:
        step.tables.append({"title": f"bench_natten.py, {what}", "lines": table})
    if result.ok:
        step.passed(what, f"{len(rows)} rows")
    elif rows:
        step.checks[-1]["detail"] += f" ({len(rows)} rows measured before that are kept)"
    return rows


def best_backend(run: Run) -> str:
    """The fastest backend for bf16 training by the benchmark, else the first candidate, else ``auto``."""
    ranking = run.data("bench", "ranking") or {}
    for key in (f"{run.profile.dtypes[0]} fwd+bwd", "float32 fwd+bwd", "bfloat16 fwd+bwd"):
        if ranking.get(key, {}).get("order"):
            return ranking[key]["order"][0]
    candidates = [b for b in candidate_backends(run) if b != "reference"]
    return candidates[0] if candidates else "auto"


def step_generator(run: Run, step: StepRecord) -> None:
    profile = run.profile
    backends = [b for b in candidate_backends(run) if b != "reference"]
    if not backends:
        step.fail("backends", "no backend other than the reference can run on this device")
        return
    base = [PY, "-m", "stylenat.cli", "throughput", "--preset", profile.preset, "--device", profile.device,
            "--repeats", str(profile.repeats)]
    # Most important first: a step cut at its limit loses the least. flex compiles once per attention shape
    # (minutes for the whole generator): it is timed last, when time is left; the reference at batch 1 only.
    eager = [b for b in backends if b != "flex"] or backends
    first_dtype, batches = profile.dtypes[0], sorted(profile.batches, reverse=True)
    plan = [(dtype, batch) for dtype in profile.dtypes for batch in batches]
    rows: list[dict] = []
    for index, (dtype, batch) in enumerate(plan):
        chosen = eager + (["reference"] if (dtype, batch) == (first_dtype, 1) else [])
        rows += throughput(run, step, f"inference, batch {batch}, {dtype}", base + [
            "--batch", str(batch), "--dtype", dtype, "--backends", ",".join(chosen)])
        if index == 0:
            rows += throughput(run, step, f"training (G+D step), batch {profile.train_batch}, {dtype}", base + [
                "--batch", str(profile.train_batch), "--dtype", dtype, "--train", "--backends", ",".join(eager)])
    compile_flag = run.data("env", "throughput_compile")
    if not compile_flag:
        step.skip("compiled", "not in this checkout (stylenat throughput has no --compile flag)"
                  if compile_flag is not None else "unknown (the environment probe did not run)")
    elif run.dry_run:
        step.skip("compiled", "dry run: torch.compile of the generator takes minutes on a CPU")
    else:
        best = best_backend(run)
        for dtype, batch in plan:
            what = f"inference, batch {batch}, {dtype}, compiled"
            if step.time_left() < 60:
                step.skip(what, f"{step.time_left():.0f} s left in the step (a compile takes about a minute)")
                continue
            rows += throughput(run, step, what, base + ["--batch", str(batch), "--dtype", dtype, "--compile",
                                                        "--backends", best])
    if "flex" in backends and "flex" not in eager:
        what = f"inference, batch {batches[0]}, {first_dtype}, flex"
        if step.time_left() < 45:
            step.skip(what, f"{step.time_left():.0f} s left in the step (flex compiles for each attention shape)")
        else:
            rows += throughput(run, step, what, base + ["--batch", str(batches[0]), "--dtype", first_dtype,
                                                        "--backends", "flex"])
    step.data["rows"] = rows
    lines = ["| what | backend | img/s | ms / batch | peak MB |", "|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['backend']} | {r['img_s']} | {r['ms']} | {r['peak_mb']} |" for r in rows]
    step.tables.append({"title": f"stylenat throughput, {profile.preset}, {profile.device}", "lines": lines})


def throughput(run: Run, step: StepRecord, what: str, argv: list[str]) -> list[dict]:
    result = run.command(step, what, argv)
    if result is None:
        return []
    rows, header = [], None
    for line in result.output.splitlines():  # the table, read by its header (columns may be added)
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| backend |"):
            header = cells
        elif header and line.startswith("| ") and len(cells) == len(header):
            row = dict(zip(header, cells))
            rows.append({"what": what, "backend": row["backend"], "img_s": row["img/s"], "ms": row["ms / batch"],
                         "peak_mb": row["peak MB"], "spread": row.get("spread", "")})
    measured = [r for r in rows if is_number(r["img_s"])]
    if result.ok:
        step.expect(what, bool(measured), f"{len(measured)} of {len(rows)} backends measured",
                    "" if measured else result.tail())
    return rows


def step_train(run: Run, step: StepRecord) -> None:
    profile = run.profile
    if (setup := _fit_setup(run, step, "gan")) is None:
        return
    data, root, trainer, backend = setup
    first, second = _fit_steps(run, profile)
    batch = profile.train_batch
    kimg = [first * batch / 1000, (first + second) * batch / 1000]
    step.data.update(backend=backend, steps=[first, first + second], batch=batch)
    model = {"generator_kwargs": {"backend": backend} if backend != "auto" else {}, "total_kimg": kimg[0],
             "image_snapshot_kimg": kimg[0] if profile.image_grids else None, "export_snapshot_kimg": None}
    trainer["callbacks"] = [{"class_path": "stylenat.training.callbacks.KimgCheckpoint",
                             "init_args": {"every_n_kimg": kimg[0]}}]
    if profile.device == "cpu":
        model.update(generator=profile.preset, discriminator=profile.preset)
    override = {"trainer": trainer, "model": {"init_args": model},
                "data": {"init_args": {"path": str(data), "batch_size": batch,  # resolution: the generator's
                                       "num_workers": profile.workers}}}
    first_config, second_config = root.with_suffix(".yaml"), root.with_name("gan-resume.yaml")
    _write_yaml(first_config, override)
    _write_yaml(second_config, {"model": {"init_args": {"total_kimg": kimg[1]}}})
    fit = [PY, "-m", "stylenat.cli", "fit", "--config", "configs/ffhq256.yaml", "--config", str(first_config)]
    what = f"fit {first} steps (batch {batch}, {profile.precision}, backend {backend})"
    result = run.command(step, what, fit, timeout=step.time_left() - 0.35 * step.limit_s)  # the rest: resume, checks
    if result is None or not result.ok:
        return
    step.passed(what, f"{result.seconds:.0f} s")
    checkpoint = root / "checkpoints" / "last.ckpt"
    if not step.expect("checkpoint written", checkpoint.exists(), str(checkpoint.relative_to(root)), result.tail()):
        return
    first_checkpoint = root / "first.ckpt"
    shutil.copyfile(checkpoint, first_checkpoint)
    resume_start = time.time()
    what = f"resume to {first + second} steps (--ckpt_path last)"
    result = run.command(step, what, fit + ["--config", str(second_config), "--ckpt_path", "last"],
                         timeout=step.time_left() - 20)
    if result is None or not result.ok:
        return
    step.passed(what, f"{result.seconds:.0f} s")
    export = root / "generator.safetensors"
    seen = run.probe(step, "inspect the run", "gan-run", str(root), str(resume_start), profile.device)
    if seen is None:
        return
    expected = [first * batch, (first + second) * batch]
    saved = [seen["first_checkpoint"], seen["checkpoint"]]
    step.expect("checkpoint", saved[0]["cur_nimg"] == expected[0],
                f"after {first} steps: {saved[0]} (expected cur_nimg {expected[0]})")
    restored = "Restored all states from the checkpoint" in result.output
    kimg_after = seen["scalars"].get("Progress/kimg", {}).get("first_since")
    step.expect("resume continues", restored and saved[1]["cur_nimg"] == expected[1]
                and kimg_after is not None and kimg_after > kimg[0],
                f"Lightning restored the checkpoint: {restored}; then {saved[1]} (expected cur_nimg {expected[1]}); "
                f"the first kimg logged after the resume is {kimg_after and round(kimg_after, 6)} (> {kimg[0]}: it "
                "continued, not restarted)",
                result.tail())
    losses = {tag: s for tag, s in seen["scalars"].items() if tag.startswith("Loss/")}
    step.expect("losses finite", bool(losses) and all(s["finite"] for s in losses.values()),
                ", ".join(f"{tag}: {s['count']} values, last {s['last']:.4g}{'' if s['finite'] else ' NOT FINITE'}"
                          for tag, s in sorted(losses.items())) or "no Loss/* scalar was logged")
    for tag, key in (("Progress/kimg_per_s", "kimg_per_s"), ("Resources/peak_memory_gib", "peak_memory_gib")):
        step.data[key] = seen["scalars"].get(tag, {}).get("last")
    loaded = seen["export"]
    step.expect("export loads", bool(loaded) and loaded["finite"] and loaded["shape"][-1] == profile.resolution
                and loaded["cur_nimg"] == expected[1], f"{export.name}: {loaded}")
    images = run.work / "generated"
    shutil.rmtree(images, ignore_errors=True)
    result = run.command(step, "stylenat generate", [PY, "-m", "stylenat.cli", "generate", "--ckpt", str(export),
                                                     "--seeds", f"0-{profile.samples - 1}", "--grid", "--outdir",
                                                     str(images), "--device", profile.device])
    if result is not None and result.ok:
        written = sorted(p.name for p in images.glob("*.png"))
        grid = images / "grid.png"
        if grid.exists():
            shutil.copyfile(grid, run.out / "samples.png")
        step.expect("stylenat generate", sum(n.startswith("seed") for n in written) == profile.samples
                    and grid.exists(), f"{len(written)} images: {', '.join(written[:3])}, ... (grid: samples.png)")
    compiled_fit(run, step, fit, root)


def compiled_fit(run: Run, step: StepRecord, fit: list[str], root: Path) -> None:
    """A few more steps with ``model.compile`` where StyleNATGAN has that option and time is left."""
    what, default = "fit with model.compile", run.data("env", "gan_compile")
    if default is None:
        step.skip(what, "not in this checkout (StyleNATGAN has no compile option)")
    elif default not in ("False", "True"):
        step.skip(what, f"StyleNATGAN's compile option defaults to {default}, not a bool: unknown how to switch it on")
    elif run.dry_run:
        step.skip(what, "dry run: torch.compile of G and D takes minutes on a CPU")
    elif step.time_left() < 60:
        step.skip(what, f"{step.time_left():.0f} s left in the step (compiling G and D takes a minute or more)")
    else:
        config, folder, steps = root.with_name("gan-compiled.yaml"), f"{root}-compiled", 8
        _write_yaml(config, {"model": {"init_args": {"compile": True, "image_snapshot_kimg": None,
                                                     "total_kimg": steps * run.profile.train_batch / 1000}},
                             "trainer": {"default_root_dir": folder, "logger": _tensorboard()}})
        result = run.command(step, f"{what} ({steps} steps)", fit + ["--config", str(config)])
        if result is not None and result.ok:
            step.passed(f"{what} ({steps} steps)", f"{result.seconds:.0f} s, compile included")


def synthetic_dataset(run: Run, step: StepRecord) -> Optional[Path]:
    """The folder of class sub-folders that steps 6 and 7 train on, written once per run."""
    profile, data = run.profile, run.work / "data"
    if not data.with_suffix(".done").exists():
        made = run.probe(step, "synthetic dataset", "dataset", str(data), str(profile.resolution),
                         str(profile.classes), str(profile.images_per_class))
        if made is None:
            return None
        data.with_suffix(".done").write_text(json.dumps(made))
    return data


def _fit_setup(run: Run, step: StepRecord, name: str) -> Optional[tuple[Path, Path, dict, str]]:
    """What steps 6 and 7 start from: the synthetic dataset, their emptied run directory ``work/<name>``, the
    trainer options they share (one device, the profile's precision, TensorBoard in the run directory, the CPU
    where the profile runs there) and the backend to train with; None when the dataset could not be made."""
    data = synthetic_dataset(run, step)
    if data is None:
        return None
    root = run.work / name
    shutil.rmtree(root, ignore_errors=True)
    trainer = {"devices": 1, "strategy": "auto", "precision": run.profile.precision, "default_root_dir": str(root),
               "log_every_n_steps": 1, "enable_progress_bar": False, "logger": _tensorboard()}
    if run.profile.device == "cpu":
        trainer["accelerator"] = "cpu"
    return data, root, trainer, best_backend(run)


def _fit_steps(run: Run, profile: Profile) -> tuple[int, int]:
    """Steps before and after the resume: the profile's, or as many (16 to 100 in all) as fit into this step's
    time less a minute (two start-ups, the checks) at half the training speed measured in step 5 (fit also runs
    bCR, lazy R1 and the EMA)."""
    first, second = profile.fit_steps
    if profile.device == "cpu":
        return first, second
    for row in run.data("generator", "rows", []):
        if row["what"].startswith("training") and row["backend"] == best_backend(run) and is_number(row["img_s"]):
            seconds = run.step("train").limit_s - 60
            total = int(seconds * 0.5 * float(row["img_s"]) / profile.train_batch)
            total = max(16, min(100, total))
            first = max(8, int(total * 0.6) // 2 * 2)
            return first, total - first
    return first, second


def step_classifier(run: Run, step: StepRecord) -> None:
    profile = run.profile
    if (setup := _fit_setup(run, step, "classifier")) is None:
        return
    data, root, trainer, backend = setup
    overrides = dict(profile.classifier_overrides, **({"backend": backend} if backend != "auto" else {}))
    trainer["max_epochs"] = 2
    override = {"trainer": trainer,
                "model": {"init_args": {"model": "nat_mini", "model_overrides": overrides,  # num_classes: the data's
                                        "warmup_epochs": 1}},
                "data": {"init_args": {"path": str(data), "val_path": None, "val_fraction": 0.25,
                                       "resolution": profile.classifier_resolution,
                                       "batch_size": profile.classifier_batch, "num_workers": profile.workers}}}
    config = root.with_suffix(".yaml")
    _write_yaml(config, override)
    what = f"fit NAT-Mini 2 epochs ({profile.classifier_resolution} px, {profile.precision}, backend {backend})"
    result = run.command(step, what, [PY, "-m", "stylenat.cli", "fit", "--config", "configs/imagenet_classifier.yaml",
                                      "--config", str(config)])
    if result is None or not result.ok:
        return
    step.passed(what, f"{result.seconds:.0f} s")
    scalars = run.probe(step, "logged scalars", "scalars", str(root), "0") or {}
    loss, top1 = scalars.get("train/loss"), scalars.get("val/top1")
    step.expect("losses finite", bool(loss) and loss["finite"] and loss["count"] > 0,
                f"train/loss: {loss and loss['count']} values, last {loss and loss['last']}")
    step.expect("validated", bool(top1), f"val/top1 {top1 and top1['last']}")
    checkpoints = sorted(str(p.relative_to(root)) for p in root.rglob("*.ckpt"))
    step.expect("checkpoint", any(p.endswith("last.ckpt") for p in checkpoints), ", ".join(checkpoints) or "none")


def step_summary(run: Run, step: StepRecord) -> None:
    ranking = run.data("bench", "ranking") or {}
    tests_complete = run.data("tests", "complete", False)
    lines = ["| dtype, pass | auto should use | then | failed its GPU tests | shapes compared |",
             "|---|---|---|---|---|"]
    for key, entry in sorted(ranking.items()):
        order = entry["order"]
        then = ", ".join(f"{b} ({entry['score'][b]:.2f}x)" for b in order[1:]) or "-"
        lines.append(f"| {key} | {order[0] if order else '-'} | {then} | {', '.join(entry['failed_tests']) or '-'} "
                     f"| {entry['shapes']} |")
    if ranking:
        step.tables.append({"title": "natten_ops na2d: the backend auto should use (time / fastest, geometric mean "
                                     "over the shapes every candidate ran)", "lines": lines})
        training = ranking.get(f"{run.profile.dtypes[0]} fwd+bwd") or next(iter(ranking.values()))
        suggestion = tuple(training["order"] + (["reference"] if "reference" not in training["order"] else []))
        step.data["auto_order"] = list(suggestion)
        step.passed("auto order", f"AUTO_ORDER['{run.profile.device}'] = {suggestion}"
                    + ("" if tests_complete else " (unverified: the GPU tests did not complete)"))
    else:
        step.skip("auto order", "no benchmark ranking")
    failures = [(s.name, f) for s in run.steps if s is not step for f in s.failures]
    step.data["failures"] = len(failures)
    step.data["steps"] = {s.name: s.status for s in run.steps if s is not step}


STEPS: list[tuple[str, str, Callable[[Run, StepRecord], None], float, float, float]] = [
    # name, title, function, GPU limit (s), reserve (s: the least it gets), dry-run limit (s)
    ("env", "Environment", step_env, 45, 15, 180),
    ("build", "CUDA extension build", step_build, 180, 60, 300),
    ("tests", "cuda-marked tests", step_tests, 120, 45, 300),
    ("bench", "Operator benchmark", step_bench, 75, 35, 300),
    ("generator", "Generator throughput", step_generator, 75, 40, 300),
    ("train", "Training end to end (ffhq256 recipe)", step_train, 120, 90, 400),
    ("classifier", "NAT-Mini classifier training", step_classifier, 60, 40, 300),
    ("summary", "Summary", step_summary, 5, 5, 10),
]


STEP_NAMES = [s[0] for s in STEPS]


def step_limit(chosen: list[tuple], index: int, left: float) -> float:
    """The GPU time limit of step ``chosen[index]`` with ``left`` seconds of the budget remaining: its own limit,
    less what the later steps' reserves need, never under its own reserve."""
    later = sum(step[4] for step in chosen[index + 1:])
    return max(chosen[index][4], min(chosen[index][3], left - later))


def _interrupted(signum, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


def run_all(run: Run, selected: list[str], injected: dict[str, str], limits: dict[str, float]) -> None:
    chosen = [s for s in STEPS if s[0] in selected]
    start = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupted)
    for index, (name, title, function, gpu_limit, reserve, dry_limit) in enumerate(chosen):
        limit = dry_limit if run.dry_run else step_limit(chosen, index, run.budget - (time.monotonic() - start))
        step = StepRecord(name, title, limit_s=round(limits.get(name, limit), 1))
        run.steps.append(step)
        step.status = "running"
        run.write_report()
        began = time.monotonic()
        step.deadline = began + step.limit_s
        try:
            if name in injected:
                inject(run, step, injected[name])
            elif name not in ("env", "summary") and not run.dry_run and run.step("env") and not run.has_gpu:
                step.skipped = "no GPU (see the env step)"
            else:
                function(run, step)
        except Exception:  # a bug of this script in one step must not lose the others
            step.fail("step", "gpu_check.py raised", traceback.format_exc(limit=-8))
        except (Interrupted, KeyboardInterrupt) as err:
            step.fail("step", f"gpu_check.py was interrupted ({type(err).__name__} {err}); the later steps did not run")
            raise
        finally:
            step.seconds = round(time.monotonic() - began, 1)
            step.finish()
            run.write_report()
            print(f"[gpu_check] {name}: {step.status} ({step.seconds:.0f} s)", flush=True)


def inject(run: Run, step: StepRecord, how: str) -> None:
    """Tests only: make a step fail or hang, to show the report survives both."""
    code = {"fail": "print('injected failure'); raise SystemExit(3)",
            "hang": "import time; print('injected hang', flush=True); time.sleep(3600)"}[how]
    run.command(step, f"injected {how}", [PY, "-c", code])


def _tensorboard() -> dict:
    """A TensorBoard logger writing straight into the run directory (its save_dir follows
    ``trainer.default_root_dir``; no version sub-folder)."""
    return {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"name": "", "version": ""}}


def _write_yaml(path: Path, content: dict) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content, sort_keys=False))
