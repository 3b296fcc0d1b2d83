"""The package works when installed from its wheel, not only from a checkout.

Builds the wheel (``pip wheel . --no-deps --no-build-isolation``) from a copy of the checkout,
installs it into a fresh virtual environment, and from a directory outside the checkout imports
the packages, looks configs up by name, and runs the console scripts ``d2kit-train`` (2
iterations), ``d2kit-demo`` (2 iterations + evaluation on 8 images), and ``d2kit-predict`` and
``d2kit-export`` on the weights ``d2kit-train`` wrote (one image). Also checks the sdist.

The fresh environment is made from the same Python 3.10 as the running one and reads the
pinned stack (torch, detectron2, ...) from the running environment's site-packages through a
``.pth`` line, so nothing is downloaded. A directory named in a ``.pth`` line joins ``sys.path``
without its own ``.pth`` files being processed, so the running environment's editable install of
this repository (a ``.pth`` import hook) stays invisible: the tests check that ``d2kit`` and
``hnms._C`` are imported from the new environment.

The wheel build reuses the compiled ``hnms._C`` of the editable install when it is newer than
its sources (setuptools' own up-to-date check on ``build/lib.*``); otherwise it compiles.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest

from d2kit.paths import REPO_ROOT, is_source_checkout, list_config_files

PACKAGES = ("d2kit", "hnms", "overlap_sampler", "noisy_anchors", "rank_nms", "ref_nms")
QUICK = "quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml"
# console script -> module
CONSOLE_SCRIPTS = {
    "d2kit-train": "d2kit.engine.train_net",
    "d2kit-demo": "d2kit.demo",
    "d2kit-predict": "d2kit.predict",
    "d2kit-export": "d2kit.export",
}
# what a copy of the checkout leaves out when git cannot list the files (build outputs, caches)
_IGNORED = (".git", ".venv", "build", "dist", "datasets", "output", "demo_output", ".whl")
_IGNORED_PATTERNS = ("__pycache__", "*.egg-info", "*.so", "*.pyc", ".*_cache", ".hypothesis")


def _base_python() -> str | None:
    """The Python 3.10 that the running environment was made from."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for name in (f"python{version}", "python3", "python"):
        path = os.path.join(sys.base_prefix, "bin", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _skip_reason() -> str | None:
    if sys.version_info[:2] != (3, 10):
        return (
            "the pinned stack (sal-detectron2 0.7.2, cp310) needs Python 3.10; this is "
            f"{sys.version.split()[0]}"
        )
    if _base_python() is None:
        return f"no Python 3.10 interpreter under {sys.base_prefix}/bin to make a venv from"
    if not is_source_checkout():
        return f"{REPO_ROOT} is not a source checkout: there is no setup.py to build a wheel from"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def _run(cmd, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{cmd} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc


def _copy_checkout(dst: str) -> None:
    """Copy the files a clean clone has (tracked and untracked-but-not-ignored), keeping mtimes."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.decode()
        files = [f for f in listing.split("\0") if f]
    except (OSError, subprocess.SubprocessError):
        files = None
    if not files:
        shutil.copytree(
            REPO_ROOT, dst, ignore=shutil.ignore_patterns(*_IGNORED, *_IGNORED_PATTERNS)
        )
        return
    for rel in files:
        src = os.path.join(REPO_ROOT, rel)
        if not os.path.isfile(src):  # deleted but not yet staged
            continue
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, rel))


def _seed_compiled_op(src_tree: str) -> None:
    """Put the editable install's ``hnms/_C*.so`` where the wheel build looks for its output, with
    its mtime: setuptools skips the compilation when it is newer than every source."""
    build_lib = os.path.join(
        src_tree, "build", f"lib.{sysconfig.get_platform()}-{sys.implementation.cache_tag}", "hnms"
    )
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    compiled = os.path.join(REPO_ROOT, "hnms", "_C" + suffix)
    if os.path.isfile(compiled):
        os.makedirs(build_lib, exist_ok=True)
        shutil.copy2(compiled, os.path.join(build_lib, os.path.basename(compiled)))


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory):
    src = str(tmp_path_factory.mktemp("src") / "d2-proposal-selection")
    _copy_checkout(src)
    return src


@pytest.fixture(scope="module")
def wheel(source_tree, tmp_path_factory):
    _seed_compiled_op(source_tree)
    out = tmp_path_factory.mktemp("wheelhouse")
    cmd = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation"]
    _run(cmd + ["-q", "-w", out], cwd=source_tree, timeout=1200)
    (wheel,) = [p for p in os.listdir(out) if p.endswith(".whl")]
    return str(out / wheel)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed (no dependencies) on top of the running stack."""
    root = tmp_path_factory.mktemp("installed")
    venv = root / "venv"
    _run([_base_python(), "-m", "venv", venv], cwd=root, timeout=300)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=root)
    purelib = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root
    ).stdout.strip()
    stack = list(dict.fromkeys(os.path.realpath(p) for p in site.getsitepackages()))
    with open(os.path.join(purelib, "pinned-stack.pth"), "w") as f:
        f.write("\n".join(stack) + "\n")
    run_dir = root / "run"  # the working directory of the runs: outside the checkout
    run_dir.mkdir()
    assert not str(run_dir).startswith(REPO_ROOT + os.sep)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "D2KIT_DATASETS")
    }
    env.update(
        PATH=str(venv / "bin") + os.pathsep + env.get("PATH", ""),
        PYTHONNOUSERSITE="1",
        XDG_CACHE_HOME=str(root / "cache"),
    )
    return dict(
        python=str(python),
        bin=str(venv / "bin"),
        purelib=purelib,
        run_dir=str(run_dir),
        cache=str(root / "cache"),
        env=env,
    )


def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        metadata = z.read(f"{dist_info}/METADATA").decode()
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
        assert f"{dist_info}/LICENSE" in names
        assert "Apache License" in z.read(f"{dist_info}/LICENSE").decode()
        for name in list_config_files():
            packaged = f"d2kit/model_zoo/configs/{name}"
            assert packaged in names, f"{name} missing from the wheel"
            with open(os.path.join(REPO_ROOT, "configs", name), "rb") as f:
                assert z.read(packaged) == f.read(), f"{packaged} differs from configs/{name}"
    assert any(n.startswith("hnms/_C.") and n.endswith(".so") for n in names)
    assert {n.split("/")[0] for n in names} == set(PACKAGES) | {dist_info}
    for field in (
        "License: Apache-2.0",
        "Requires-Python: >=3.10",
        "Classifier: Programming Language :: Python :: 3.10",
        "Description-Content-Type: text/markdown",
        "# Proposal selection for Detectron2",
    ):
        assert field in metadata
    for name, module in CONSOLE_SCRIPTS.items():
        assert f"{name} = {module}:" in entry_points


def test_sdist_contents(source_tree, tmp_path):
    _run([sys.executable, "setup.py", "-q", "sdist", "-d", tmp_path], cwd=source_tree)
    (sdist,) = [p for p in os.listdir(tmp_path) if p.endswith(".tar.gz")]
    with tarfile.open(tmp_path / sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    expected = {"LICENSE", "README.md", "setup.py", "MANIFEST.in", "hnms/csrc/hnms.h"}
    expected |= {f"configs/{name}" for name in list_config_files()}
    assert expected <= names, sorted(expected - names)


def test_installed_imports_and_configs(installed):
    """Imports come from the new venv; configs are found by name; datasets go to the user cache."""
    code = (
        "import json, sys, d2kit, hnms._C, d2kit.paths as p\n"
        "print(json.dumps(dict(d2kit=d2kit.__file__, op=hnms._C.__file__, path=sys.path,\n"
        "  checkout=p.is_source_checkout(), configs=p.list_config_files(),\n"
        "  datasets=p.datasets_root(),\n"
        "  hnms=p.get_config_file('HNMS/hnms_faster_rcnn_R_50_FPN_1x.yaml'),\n"
        "  prefixed=p.resolve_config_file('configs/quick_schedules/Base-Quick-RCNN-FPN.yaml'))))"
    )
    env = installed["env"]
    out = _run([installed["python"], "-c", code], cwd=installed["run_dir"], env=env).stdout
    info = json.loads(out.strip().splitlines()[-1])
    purelib = installed["purelib"] + os.sep
    assert info["d2kit"].startswith(purelib) and info["op"].startswith(purelib), info
    # the only entries inside the checkout are the stack's site-packages (e.g. .venv's)
    stack = {os.path.realpath(p) for p in site.getsitepackages()}
    inside = {os.path.realpath(p) for p in info["path"] if p.startswith(REPO_ROOT + os.sep)}
    assert REPO_ROOT not in info["path"] and inside <= stack, info["path"]
    assert info["checkout"] is False
    assert info["configs"] == list_config_files()
    packaged = os.path.join(purelib, "d2kit", "model_zoo", "configs")
    assert info["hnms"] == os.path.join(packaged, "HNMS", "hnms_faster_rcnn_R_50_FPN_1x.yaml")
    assert info["prefixed"] == os.path.join(packaged, "quick_schedules", "Base-Quick-RCNN-FPN.yaml")
    assert info["datasets"] == os.path.join(installed["cache"], "d2kit", "datasets")
    for name in CONSOLE_SCRIPTS:
        assert os.path.isfile(os.path.join(installed["bin"], name)), name


@pytest.fixture(scope="module")
def trained(installed):
    """``d2kit-train``: the quick config by name, 2 iterations, from outside the checkout; its
    OUTPUT_DIR (the default, ``./output``)."""
    cmd = ["d2kit-train", "--config-file", QUICK, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()"]
    cmd += ["DATALOADER.NUM_WORKERS", "0"]
    _run(cmd, cwd=installed["run_dir"], env=installed["env"])
    return os.path.join(installed["run_dir"], "output")


def test_installed_train_two_iterations(installed, trained):
    assert os.path.isfile(os.path.join(trained, "model_final.pth"))
    datasets = os.path.join(installed["cache"], "d2kit", "datasets")
    assert os.path.isfile(os.path.join(datasets, "synth_shapes_train", "annotations.json"))
    assert not os.path.exists(os.path.join(installed["purelib"], "datasets"))


def _sample_image(installed) -> str:
    images = os.path.join(installed["cache"], "d2kit", "datasets", "synth_shapes_train", "images")
    return os.path.join(images, sorted(os.listdir(images))[0])


def test_installed_predict(installed, trained):
    """``d2kit-predict`` with the weights ``d2kit-train`` wrote, on one synthetic image."""
    image = _sample_image(installed)
    cmd = ["d2kit-predict", "--config-file", QUICK, "--input", image, "--output", "predictions"]
    cmd += ["--score-threshold", "0", "MODEL.WEIGHTS", os.path.join(trained, "model_final.pth")]
    _run(cmd, cwd=installed["run_dir"], env=installed["env"])
    with open(os.path.join(installed["run_dir"], "predictions", "predictions.json")) as f:
        assert [im["file_name"] for im in json.load(f)["images"]] == [image]


def test_installed_demo(installed):
    """``d2kit-demo``: 2 iterations, evaluation on 8 images, a drawing, under ./demo_output."""
    cmd = ["d2kit-demo", "--num-vis", "1", "SOLVER.MAX_ITER", "2"]
    cmd += ["DATASETS.TEST", '("synth_shapes_val_mini",)', "DATALOADER.NUM_WORKERS", "0"]
    _run(cmd, cwd=installed["run_dir"], env=installed["env"])
    out = os.path.join(installed["run_dir"], "demo_output")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["iterations"] == 2 and 0 <= summary["AP50"] <= 100
    assert summary["config"].startswith(installed["purelib"] + os.sep)
    assert os.path.isfile(os.path.join(out, "vis", "000000.png"))


def test_installed_export(installed, trained):
    """``d2kit-export``: TorchScript of the weights ``d2kit-train`` wrote, checked on one image."""
    cmd = ["d2kit-export", "--config-file", QUICK, "--output", "exported"]
    cmd += ["--sample-image", _sample_image(installed)]
    cmd += ["MODEL.WEIGHTS", os.path.join(trained, "model_final.pth")]
    _run(cmd, cwd=installed["run_dir"], env=installed["env"])
    out = os.path.join(installed["run_dir"], "exported")
    assert os.path.isfile(os.path.join(out, "model.ts"))
    with open(os.path.join(out, "export_info.json")) as f:
        assert json.load(f)["check"]["equal"] is True
