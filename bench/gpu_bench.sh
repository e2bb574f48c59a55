#!/usr/bin/env bash
# The GPU figures: every bench on a ~1.07B-parameter Llama config (random init, bf16).
#   bash bench/gpu_bench.sh            (repo root, on a machine with an NVIDIA GPU)
#   bash bench/gpu_bench.sh generate   (the generation benches only: a few minutes)
# Where the project is not installed (a bare GPU box), put wheels of the missing packages
# and a saved SmolLM2 tokenizer under .whl/ and .whl/tokenizer first; results go to $OUT or ./bench-out.
set -u
WHAT=${1:-all}
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
if [ "$WHAT" = all ]; then
python3 bench/hooks_overhead.py --model llama-1b --batch 8 --seq 512 --repeats 20 2>&1 | tee "$OUT/hooks.txt"
# Training (issue 12): bundled data as before, then synthetic 512..1024-token examples (realistic
# lengths), padded vs packed, then each fused option, then ZeRO-3 (MFU counts the unpartitioned
# parameters). 6 warm-up steps: fewer made the CC/SFT ratio unstable on an H200.
TS="bench/train_step.py --model llama-1b --batch 16 --steps 8 --warmup 6"
python3 $TS --cutoff 512 2>&1 | tee "$OUT/train_step.txt"
python3 $TS --seq-len 1024 --packing 2>&1 | tee "$OUT/train_step_packed.txt"
python3 $TS --seq-len 1024 --packing --liger 2>&1 | tee "$OUT/train_step_liger.txt"
python3 $TS --seq-len 1024 --packing --liger --compile 2>&1 | tee "$OUT/train_step_liger_compile.txt"
python3 $TS --seq-len 1024 --packing --deepspeed zero3 2>&1 | tee "$OUT/train_step_zero3.txt"
python3 $TS --cutoff 512 --deepspeed zero2 2>&1 | tee "$OUT/train_step_zero2.txt"
fi
# Generation: today's path (dynamic cache) against the static cache, eager, then with the decoding
# step compiled (CUDA graphs, mode reduce-overhead); should that fail, compiled without CUDA graphs.
GEN="bench/generate.py --model llama-1b --prompts 64 --batch 32 --new-tokens 40"
python3 $GEN --cache static 2>&1 | tee "$OUT/generate.txt"
python3 $GEN --cache static --compile --no-reference 2>&1 | tee "$OUT/generate_compiled.txt"
if [ "${PIPESTATUS[0]}" != 0 ]; then
  python3 $GEN --cache static --compile --compile-mode default --no-reference 2>&1 | tee "$OUT/generate_compiled_default.txt"
fi
