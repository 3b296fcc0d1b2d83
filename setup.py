"""Build and install the proposal-selection research projects for Detectron2.

Installs the paper packages (``hnms``, ``overlap_sampler``, ``noisy_anchors``, ``rank_nms``,
``ref_nms``, whichever exist) and the shared package ``d2kit``, and compiles the shared op
``hnms._C`` from ``hnms/csrc``: the C++ CPU kernel always, the CUDA kernel when ``FORCE_CUDA=1``
or when a GPU and ``CUDA_HOME`` are visible. torch must be importable at build time, so install
with ``pip install --no-build-isolation -e .`` (``make setup`` does).

The YAML configs stay in one place, ``configs/`` (an sdist carries it, MANIFEST.in). Building a
wheel copies it into the package as ``d2kit/model_zoo/configs/`` (``build_py`` below), so that an
installed package finds the configs with ``d2kit.paths.get_config_file``; an editable install
reads ``configs/`` in place.
"""

import glob
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PAPER_PACKAGES = ["hnms", "overlap_sampler", "noisy_anchors", "rank_nms", "ref_nms"]
HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS_DIR = "configs"
# where the configs go inside the built package (d2kit.paths.PACKAGED_CONFIGS_ROOT)
PACKAGED_CONFIGS_DIR = os.path.join("d2kit", "model_zoo", "configs")
# console scripts: train_net, the demo, predictions on your images, TorchScript export
CONSOLE_SCRIPTS = [
    "d2kit-train = d2kit.engine.train_net:cli",
    "d2kit-demo = d2kit.demo:main",
    "d2kit-predict = d2kit.predict:main",
    "d2kit-export = d2kit.export:main",
]


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


class BuildPyWithConfigs(build_py):
    """``build_py`` that also copies every file under ``configs/`` into the built package as
    ``d2kit/model_zoo/configs/``, keeping the tree (relative ``_BASE_`` references keep working).

    The copy is rebuilt from scratch on each build, so a config deleted from ``configs/`` does not
    linger in a reused ``build/``. Editable installs skip it: they read ``configs/`` in place.
    """

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if not os.path.isdir(CONFIGS_DIR):
            raise FileNotFoundError(
                f"{os.path.abspath(CONFIGS_DIR)} is missing: the package ships the configs; "
                "build from a checkout or from an sdist that includes them (MANIFEST.in)"
            )
        target = os.path.join(self.build_lib, PACKAGED_CONFIGS_DIR)
        if os.path.isdir(target):
            shutil.rmtree(target)
        for src in _config_files():
            dst = os.path.join(target, os.path.relpath(src, CONFIGS_DIR))
            self.mkpath(os.path.dirname(dst))
            self.copy_file(src, dst, preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        target = os.path.join(self.build_lib, PACKAGED_CONFIGS_DIR)
        return outputs + [
            os.path.join(target, os.path.relpath(src, CONFIGS_DIR)) for src in _config_files()
        ]


def _config_files():
    return sorted(
        path
        for path in glob.glob(os.path.join(CONFIGS_DIR, "**", "*"), recursive=True)
        if os.path.isfile(path)
    )


def get_cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {
        "build_ext": BuildExtension.with_options(use_ninja=False),
        "build_py": BuildPyWithConfigs,
    }


def read_readme():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


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
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    author="the d2-proposal-selection authors",
    license="Apache-2.0",
    license_files=["LICENSE"],
    keywords=[
        "detectron2",
        "object detection",
        "non-maximum suppression",
        "hashing NMS",
        "proposal selection",
        "label assignment",
        "RoI sampling",
        "referring expression grounding",
        "pytorch",
    ],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "License :: OSI Approved :: Apache Software License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: C++",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
    # Supported: Python 3.10, the version of the pinned stack (sal-detectron2 0.7.2 is cp310-only;
    # requirements/). Newer Pythons are not refused, for users with their own detectron2 build.
    python_requires=">=3.10",
    packages=packages,
    # Ref-NMS ships the word vectors of the synthetic referring vocabulary (and their generator).
    package_data={"ref_nms": ["data/*.txt", "data/*.py"]},
    ext_modules=get_extensions(),
    cmdclass=get_cmdclass(),
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    zip_safe=False,
)
