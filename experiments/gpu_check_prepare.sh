#!/usr/bin/env bash
# Prepare the GPU check (experiments/gpu_check.sh) on a machine with PyPI, for a GPU machine without network: the
# wheels its image lacks go to .whl/ and the e-SNLI data to .gpudata/ (both git-ignored, carried to the device).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}"
for ignored in /.whl/ /.gpudata/; do grep -qsxF "$ignored" .git/info/exclude || echo "$ignored" >> .git/info/exclude; done
mkdir -p .whl .gpudata
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 jsonlines==4.0.0 transformers==5.24.0
cp -r "$data/esnli" .gpudata/
du -sh .whl .gpudata
