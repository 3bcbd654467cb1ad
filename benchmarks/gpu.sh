#!/usr/bin/env bash
# The GPU benchmark (benchmarks/gpu_bench.py, then benchmarks/llm.py): under 8 minutes on one H100-class GPU, no download, no data.
#   bash benchmarks/gpu.sh            # on the GPU machine (its python3 holds PyTorch; nblib is used from here)
#   bash benchmarks/gpu.sh --smoke    # the same code paths on CPU with a tiny model, under a minute (CI runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" benchmarks/gpu_bench.py "$@"
# (5) the LLM backend's label scoring, prefix reuse vs. naive (benchmarks/llm.py): LLM_MODEL=<causal LM folder> for a
# real one; else a random causal LM of Qwen2.5-0.5B's shape on the GPU, a tiny one in smoke mode.
echo; echo "(5) LLM label scoring (6 labels)"
if [[ " $* " == *" --smoke "* ]]; then
  "$PY" benchmarks/llm.py --device cpu --texts 32 --batch-size 16
else
  "$PY" benchmarks/llm.py ${LLM_MODEL:+--model "$LLM_MODEL"} --shape small --texts 2000 --naive-texts 200 --batch-size 32
fi
