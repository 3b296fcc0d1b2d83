#!/usr/bin/env bash
# Compile hnms/csrc/hnms_cuda.cu to an object file on a machine without a GPU or a CUDA toolkit:
# a compile check of the CUDA kernel (syntax, templates, device code for sm_90) against the
# installed torch's headers. Nothing is linked or run; use run_hnms_gpu.sh on a GPU machine.
#
#   bash benchmarks/gpu/compile_cuda_kernel.sh [WORK_DIR]
#
# Needs the package index (pip download of NVIDIA's nvcc, crt, nvvm, runtime and cccl wheels,
# CUDA 13, about 150 MB, unpacked under WORK_DIR, default /tmp/hnms_nvcc) and the project's
# .venv (or PYTHON=...). The cuBLAS/cuSPARSE/cuSOLVER headers torch includes come from the
# nvidia-* wheels torch itself installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
WORK=${1:-/tmp/hnms_nvcc}
ARCH=${ARCH:-90}
mkdir -p "$WORK"
NV="$WORK/nvidia/cu13"
if [ ! -x "$NV/bin/nvcc" ]; then
  "$PY" -m pip download -q --no-deps -d "$WORK/wheels" \
    nvidia-cuda-nvcc nvidia-cuda-crt nvidia-nvvm nvidia-cuda-runtime nvidia-cuda-cccl
  for w in "$WORK"/wheels/*.whl; do "$PY" -m zipfile -e "$w" "$WORK"; done
  chmod +x "$NV"/bin/* "$NV"/nvvm/bin/* 2>/dev/null || true
fi
export PATH="$NV/bin:$PATH"
nvcc --version | tail -n 1
mapfile -t INCLUDES < <("$PY" - <<'EOF'
import glob, os, sysconfig
from torch.utils.cpp_extension import include_paths
import torch
site = os.path.dirname(os.path.dirname(torch.__file__))
for p in include_paths() + sorted(glob.glob(os.path.join(site, "nvidia", "*", "include"))):
    print("-I" + p)
print("-I" + sysconfig.get_paths()["include"])
EOF
)
ABI=$("$PY" -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
# the flags torch.utils.cpp_extension passes for a CUDA source (see setup.py)
nvcc -c hnms/csrc/hnms_cuda.cu -o "$WORK/hnms_cuda.o" -std=c++17 -O3 -fmad=false -DWITH_CUDA \
  -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H -D_GLIBCXX_USE_CXX11_ABI="$ABI" \
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr \
  -Xcompiler -fPIC -Xcompiler -Wall -gencode "arch=compute_${ARCH},code=sm_${ARCH}" \
  -I"$NV/include" -I"$NV/include/cccl" "${INCLUDES[@]}"
echo "compiled hnms/csrc/hnms_cuda.cu for sm_${ARCH}: $WORK/hnms_cuda.o ($(stat -c %s "$WORK/hnms_cuda.o") bytes)"
