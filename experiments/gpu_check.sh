#!/usr/bin/env bash
# The GPU check, run on the GPU machine from the repository root after experiments/gpu_check_prepare.sh (carry .whl
# and .gpudata): installs the carried wheels, runs experiments/gpu_paper_check.py and copies its table and log to
# $OUT (the model folders stay behind: they are too large to bring back).
set -euo pipefail
out="${OUT:-gpu-check}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"; } | tee "$out/gpu.txt"
python3 experiments/gpu_paper_check.py --data-dir .gpudata --out /tmp/gpu-check "$@" 2>&1 | tee "$out/log.txt"
cp /tmp/gpu-check/gpu_check.json "$out/"
