#!/usr/bin/env bash
# Build hnms._C with the CUDA kernels, run the HNMS op tests (CUDA twins included) and the GPU
# speed benchmark, on a machine with a GPU, nvcc and torch + torchvision (detectron2 not needed).
#
#   bash benchmarks/gpu/run_hnms_gpu.sh [OUT_DIR]
#
# OUT_DIR (default benchmarks/results) receives hnms_gpu_speed.json and the test log.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT=${1:-benchmarks/results}
mkdir -p "$OUT"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'gpu', torch.cuda.get_device_name(0))"
rm -f hnms/_C*.so
FORCE_CUDA=1 "$PY" setup.py build_ext --inplace 2>&1 | tail -n 3
"$PY" -c "import hnms; assert hnms._ext.has_cuda_kernels(), 'built without CUDA'; print('hnms._C with CUDA')"
# --confcutdir: only tests/hnms/conftest.py (the repository's conftest needs detectron2)
"$PY" -m pytest -q -p no:cacheprovider --confcutdir=tests/hnms \
  tests/hnms/test_hnms_op.py tests/hnms/test_hnms_cuda.py tests/hnms/test_soft_nms.py 2>&1 | tee "$OUT/hnms_gpu_tests.log" | tail -n 15
"$PY" benchmarks/gpu/hnms_gpu_speed.py --out "$OUT"
