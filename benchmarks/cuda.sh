#!/usr/bin/env bash
# The GPU checks and the CUDA layer benchmark of docs/benchmarks.md, in one run on a CUDA machine:
#   benchmarks/cuda.sh OUT_DIR
# tests/test_cuda.py (every router on the GPU against the CPU, grouped_mm against the loop in bf16, the Trainer,
# the expert-parallel layer over NCCL), then `smoe bench layer` in bf16 at the standard sizes and at N = 65,536.
# Uses the python3 on PATH with smoe importable (installed, or PYTHONPATH=.); transformers for the HF rows.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/cuda.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__)"
} | tee "$out/machine.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.txt"
timeout 300 python3 -m smoe bench layer --device cuda --dtype bfloat16 --repeats 20 \
  --json "$out/bench_layer_cuda.json" 2>&1 | grep -v '^bench layer' | tee "$out/bench_layer_cuda.txt"
timeout 200 python3 -m smoe bench layer --device cuda --dtype bfloat16 --repeats 20 --tokens 65536 --experts 8,64 \
  --impls smoe,smoe-uniform,experts-only,dense,hf-grouped_mm \
  --json "$out/bench_layer_cuda_large.json" 2>&1 | grep -v '^bench layer' | tee "$out/bench_layer_cuda_large.txt"
