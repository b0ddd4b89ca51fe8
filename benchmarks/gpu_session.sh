#!/usr/bin/env bash
# What a session with a GPU runs first, in one call (the device machine has torch, triton,
# numba, hypothesis, pytest, timm and torchvision; dropkit runs from src/ without installing):
#   1. the Triton kernels compiled on the GPU, against the pure-PyTorch path and the NumPy
#      reference, bit for bit (the same tests CI runs in Triton's CPU interpreter);
#   2. the GPU benchmark, `dropkit bench --device cuda` (README "Benchmark", docs/benchmarks.md).
# Usage: bash benchmarks/gpu_session.sh [extra `dropkit bench` options, e.g. --quick]
# Results go to $OUT (the device tool's output folder) or ./gpu-results.
set -o pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-gpu-results}"
mkdir -p "$out"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$out/env.txt"
python3 -m pytest tests/test_triton.py tests/test_triton_gaussian.py tests/test_triton_drop_block.py \
    tests/test_fused_add.py tests/test_kernels.py -q -p no:cacheprovider 2>&1 | tee "$out/tests.log"
tests=$?
python3 -m dropkit bench --device cuda --json "$out/bench-cuda.json" "$@" 2>&1 | tee "$out/bench.log"
bench=$?
echo "tests exit $tests, bench exit $bench"
exit $(( tests || bench ))
