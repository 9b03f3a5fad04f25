#!/usr/bin/env bash
# The CUDA path, on a machine with a GPU and torch already installed (no network needed):
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# the CUDA test, bench_train on the GPU, then the reference fish (guppy preset, its recipe,
# recorded) trained there and evaluated on 720 held-out prompts. Figures are in the output.
set -uo pipefail
out=${1:-${OUT:-/tmp/gpu-check}}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
$py -m guppy.data.cli --persona fish --samples 0 >/dev/null
$py -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_induction.py -k cuda 2>&1 | tail -3
$py benchmarks/bench_train.py --device cuda --batch-size 64 --steps 30
start=$(date +%s)
$py -m guppy.train.trainer --preset guppy --record --quiet --device cuda --run-name gpu-reference
echo "guppy-train --preset guppy --record on cuda: $(( $(date +%s) - start )) s wall"
$py -m guppy.evaluate --run runs/gpu-reference --prompts 12 | tail -4
cp runs/gpu-reference/run.json runs/gpu-reference/metrics.csv "$out"/
