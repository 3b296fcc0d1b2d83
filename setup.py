"""Build and install the proposal-selection research projects for Detectron2.

Installs the paper packages (``hnms``, ``overlap_sampler``, ``noisy_anchors``, ``rank_nms``,
``ref_nms``, whichever exist) and the shared package ``d2kit``, and compiles the shared op
``hnms._C`` from ``hnms/csrc``: the C++ CPU kernel always, the CUDA kernel when ``FORCE_CUDA=1``
or when a GPU and ``CUDA_HOME`` are visible. torch must be importable at build time, so install
with ``pip install --no-build-isolation -e .`` (``make setup`` does).
"""

import glob
import os

from setuptools import find_packages, setup

PAPER_PACKAGES = ["hnms", "overlap_sampler", "noisy_anchors", "rank_nms", "ref_nms"]
HERE = os.path.dirname(os.path.abspath(__file__))


def get_extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    csrc = os.path.join("hnms", "csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
    if not sources:
        return []
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "*.cu")))
    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    use_cuda = force_cuda or (torch.cuda.is_available() and CUDA_HOME is not None)
    # No floating-point contraction: IoUHash's a * b + c must round twice, as in the pure-torch
    # reference, or the cell codes at a border differ between backends (hnms/csrc/hnms_hash.h).
    # GCC contracts into FMAs when the target has them (e.g. -march=native, aarch64); nvcc always
    # does unless told -fmad=false.
    extra_compile_args = {"cxx": ["-O3", "-std=c++17", "-ffp-contract=off"]}
    define_macros = []
    extension = CppExtension
    if use_cuda and cuda_sources:
        extension = CUDAExtension
        sources += cuda_sources
        define_macros.append(("WITH_CUDA", None))
        nvcc_flags = os.environ.get("NVCC_FLAGS", "").split()
        extra_compile_args["nvcc"] = ["-O3", "-std=c++17", "-fmad=false"] + nvcc_flags
    return [
        extension(
            "hnms._C",
            sources,
            include_dirs=[os.path.join(HERE, csrc)],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
        )
    ]


def get_cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=False)}


packages = [
    p
    for p in find_packages(exclude=("tests*", "projects*", "configs*", "benchmarks*"))
    if p.split(".")[0] in PAPER_PACKAGES + ["d2kit"]
]

setup(
    name="d2-proposal-selection",
    version="0.1.0",
    description=(
        "Detectron2 research projects: Rank-NMS, Noisy Anchors, HNMS, Overlap Sampler, Ref-NMS"
    ),
    python_requires=">=3.10",
    packages=packages,
    # Ref-NMS ships the word vectors of the synthetic referring vocabulary (and their generator).
    package_data={"ref_nms": ["data/*.txt", "data/*.py"]},
    ext_modules=get_extensions(),
    cmdclass=get_cmdclass(),
    zip_safe=False,
)
