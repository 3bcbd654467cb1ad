#!/usr/bin/env bash
# The GPU benchmark (benchmarks/gpu_bench.py): under 8 minutes on one H100-class GPU, no download, no data.
#   bash benchmarks/gpu.sh            # on the GPU machine (its python3 holds PyTorch; nblib is used from here)
#   bash benchmarks/gpu.sh --smoke    # the same code paths on CPU with a tiny model, under a minute (CI runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_bench.py "$@"
