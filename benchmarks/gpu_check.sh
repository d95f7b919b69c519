#!/usr/bin/env bash
# The whole GPU check of issue 11 on a bare GPU machine, in one command (budget: under six
# minutes on an H200; not yet measured there, see docs/benchmarks.md):
#
#   bash benchmarks/gpu_check.sh [WHEELS_DIR] [JSON_OUT]
#
# The machine needs python3 with torch, torchvision, accelerate, numpy, pyyaml, safetensors,
# scipy, requests, regex and filelock (the H200 image has them). What it lacks (diffusers and
# torch-fidelity, which the package imports) is installed from the wheels in WHEELS_DIR
# (default .whl, git-ignored); fetch them here with
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl \
#       diffusers==0.42.1 torch-fidelity==0.4.0 importlib_metadata zipp
#
# JSON_OUT defaults to benchmarks/results/gpu-check-<commit>.json. The benchmark trains on
# random images (speed does not depend on content), so no dataset travels.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=${1:-.whl}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
json=${2:-benchmarks/results/gpu-check-$commit.json}
if ! python3 -c "import diffusers, torch_fidelity" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/sqdm-site "$wheels"/*.whl
    export PYTHONPATH=/tmp/sqdm-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
python3 benchmarks/gpu_check.py --json "$json"
echo "commit $commit"
