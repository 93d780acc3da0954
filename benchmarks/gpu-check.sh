#!/usr/bin/env bash
# The GPU check, in one go (under 8 minutes on one GPU): the tests that skip on a CPU, then the full-size
# benchmark. Writes benchmarks/results/<gpu>-full.json and prints it. Nothing here estimates a figure:
# it measures on the GPU it runs on, or fails.
#   bash benchmarks/gpu-check.sh            (from the repository root, with the venv of `make setup`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this is the GPU check')"
gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))")
echo "[gpu-check] $gpu: the CUDA tests"
OMP_NUM_THREADS=4 DWF_PROFILE=smoke DWF_RUNS_DIR=$(mktemp -d) "$PY" -m pytest -q -p no:cacheprovider \
  tests/core/test_fast_path.py tests/data/test_data.py -k cuda -rs
echo "[gpu-check] $gpu: python benchmarks/bench.py --size full"
out="benchmarks/results/${gpu}-full.json"
timeout 420 "$PY" benchmarks/bench.py --size full --device cuda --out "$out"
cat "$out"
