#!/usr/bin/env bash
# Download, on a machine with pip and network access, the wheels of exactly what the GPU machine lacks, into
# .whl/ (git-ignored), for its Python 3.12 on x86-64 Linux. The GPU machine (Python 3.12, torch, triton,
# lightning, torchmetrics, tensorboard, safetensors, numpy, scipy, pillow, scikit-learn, pyyaml, requests, tqdm,
# pytest, pytest-timeout, hypothesis, nvcc, ninja; no network) installs them with
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
# (README, "GPU acceptance"). --no-deps: each requirement is named below, and checked here against the
# wheels' Requires-Dist.
#
#   scripts/gpu_wheels.sh            # -> .whl/*.whl, about 2 MB
#
# The versions are the ones this project is tested with. What each needs (Requires-Dist, extras skipped):
#   jsonargparse        PyYAML (on the GPU machine); its [signatures] extra: docstring-parser, typeshed-client
#   docstring-parser    -
#   typeshed-client     typing-extensions (on the GPU machine)
#   clean-fid           torch, torchvision, numpy, scipy, tqdm, pillow, requests (all on the GPU machine)
#   lmdb                -
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  jsonargparse==4.53.0
  docstring-parser==0.18.0
  typeshed-client==2.15.0
  clean-fid==0.1.35
  lmdb==3.0.0
)
# What the GPU machine already has (KINDS list of the device machines): a requirement outside both lists fails.
ON_GPU_MACHINE="pyyaml typing-extensions torch torchvision numpy scipy tqdm pillow requests"

PYTHON=${PYTHON:-python3}
rm -rf .whl
mkdir -p .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

# Every unconditional requirement (and jsonargparse's [signatures] extra) must be carried or already there.
normalize() { tr 'A-Z_.' 'a-z--'; }
carried=$(for w in "${WHEELS[@]}"; do echo "${w%%==*}"; done | normalize)
status=0
for wheel in .whl/*.whl; do
  while read -r requirement; do
    name=$(echo "$requirement" | sed -E 's/^Requires-Dist: *([A-Za-z0-9_.-]+).*/\1/' | normalize)
    if ! grep -qx "$name" <<<"$carried" && ! grep -qw "$name" <<<"$ON_GPU_MACHINE"; then
      echo "gpu_wheels.sh: $(basename "$wheel") needs $name, which is neither carried nor on the GPU machine" >&2
      status=1
    fi
  done < <(unzip -p "$wheel" '*.dist-info/METADATA' | grep '^Requires-Dist:' \
             | grep -v 'extra *==' ; unzip -p "$wheel" '*.dist-info/METADATA' \
             | grep '^Requires-Dist:.*extra *== *"signatures"' || true)
done
[ "$status" -eq 0 ] || exit "$status"

count=$(ls .whl/*.whl | wc -l)
[ "$count" -eq "${#WHEELS[@]}" ] || { echo "gpu_wheels.sh: expected ${#WHEELS[@]} wheels, got $count" >&2; exit 1; }
ls -l .whl/*.whl | awk '{print $5, $9}'
echo "gpu_wheels.sh: $count wheels, $(du -ch .whl/*.whl | tail -1 | cut -f1) in .whl/ (carry: [\".whl\"])"
