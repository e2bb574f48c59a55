#!/usr/bin/env bash
# The GPU figures: every bench on a ~1.07B-parameter Llama config (random init, bf16).
#   bash bench/gpu_bench.sh            (repo root, on a machine with an NVIDIA GPU)
# Where the project is not installed (a bare GPU box), put wheels of the missing packages
# and a saved SmolLM2 tokenizer under .whl/ and .whl/tokenizer first; results go to $OUT or ./bench-out.
set -u
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  [ -d .whl/tokenizer ] && export CC_TUNING_TOKENIZER_DIR=$PWD/.whl/tokenizer
fi
export DS_ACCELERATOR=cuda PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
python3 bench/hooks_overhead.py --model llama-1b --batch 8 --seq 512 --repeats 20 2>&1 | tee "$OUT/hooks.txt"
python3 bench/train_step.py --model llama-1b --batch 16 --steps 8 --cutoff 512 2>&1 | tee "$OUT/train_step.txt"
python3 bench/train_step.py --model llama-1b --batch 16 --steps 8 --cutoff 512 --deepspeed zero2 2>&1 | tee "$OUT/train_step_zero2.txt"
python3 bench/generate.py --model llama-1b --prompts 64 --batch 32 --new-tokens 40 2>&1 | tee "$OUT/generate.txt"
