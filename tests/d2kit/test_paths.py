"""d2kit.paths: config lookup and the dataset cache, in a checkout and as an installed package.

The installed layout is simulated: ``REPO_ROOT`` pointed at a directory without ``setup.py``
(as site-packages) and ``PACKAGED_CONFIGS_ROOT`` at a small configs tree.
"""

from __future__ import annotations

import os

import pytest
from detectron2.config import get_cfg

from d2kit import paths

QUICK = "quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml"


@pytest.fixture
def installed_layout(tmp_path, monkeypatch):
    """Pretend the package is installed: its parent has no setup.py; configs ship in the package."""
    site_packages = tmp_path / "site-packages"
    packaged = site_packages / "d2kit" / "model_zoo" / "configs"
    (packaged / "quick_schedules").mkdir(parents=True)
    (packaged / "Base.yaml").write_text("MODEL:\n  MASK_ON: False\nVERSION: 2\n")
    (packaged / "quick_schedules" / "leaf.yaml").write_text(
        '_BASE_: "../Base.yaml"\nSOLVER:\n  MAX_ITER: 7\n'
    )
    monkeypatch.setattr(paths, "REPO_ROOT", str(site_packages))
    monkeypatch.setattr(paths, "PACKAGED_CONFIGS_ROOT", str(packaged))
    monkeypatch.chdir(tmp_path)
    return packaged


def test_this_checkout_is_detected():
    assert paths.is_source_checkout()
    assert paths.configs_root() == os.path.join(paths.REPO_ROOT, "configs") == paths.CONFIGS_ROOT


def test_checkout_detection_needs_setup_py_and_configs(tmp_path):
    assert not paths.is_source_checkout(str(tmp_path))
    (tmp_path / "configs").mkdir()
    assert not paths.is_source_checkout(str(tmp_path)), "configs/ alone is not a checkout"
    (tmp_path / "setup.py").write_text("")
    assert paths.is_source_checkout(str(tmp_path))


# ---- datasets_root: the three cases ---------------------------------------------------------


def test_datasets_env_wins(tmp_path, monkeypatch, installed_layout):
    monkeypatch.setenv(paths.DATASETS_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.datasets_root() == str(tmp_path / "data")
    monkeypatch.setenv(paths.DATASETS_ENV, "relative/data")
    assert paths.datasets_root() == os.path.join(os.getcwd(), "relative", "data")


def test_datasets_env_wins_in_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.DATASETS_ENV, str(tmp_path / "data"))
    assert paths.datasets_root() == str(tmp_path / "data")


def test_datasets_in_checkout(monkeypatch):
    monkeypatch.delenv(paths.DATASETS_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/else")
    assert paths.datasets_root() == os.path.join(paths.REPO_ROOT, "datasets")


def test_datasets_in_checkout_empty_env_is_unset(monkeypatch):
    monkeypatch.setenv(paths.DATASETS_ENV, "")
    assert paths.datasets_root() == os.path.join(paths.REPO_ROOT, "datasets")


def test_datasets_installed_xdg_cache(tmp_path, monkeypatch, installed_layout):
    monkeypatch.delenv(paths.DATASETS_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.datasets_root() == str(tmp_path / "xdg" / "d2kit" / "datasets")
    assert not paths.datasets_root().startswith(paths.REPO_ROOT)


@pytest.mark.parametrize("xdg", [None, "", "relative/cache"])
def test_datasets_installed_home_cache(tmp_path, monkeypatch, installed_layout, xdg):
    """Without a usable XDG_CACHE_HOME (unset, empty or relative): ~/.cache/d2kit/datasets."""
    monkeypatch.delenv(paths.DATASETS_ENV, raising=False)
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.datasets_root() == str(tmp_path / "home" / ".cache" / "d2kit" / "datasets")


# ---- config lookup --------------------------------------------------------------------------


def test_get_config_file_in_checkout():
    path = paths.get_config_file(QUICK)
    assert path == os.path.join(paths.REPO_ROOT, "configs", QUICK) and os.path.isfile(path)
    assert QUICK in paths.list_config_files()
    assert all(n.endswith(".yaml") and not os.path.isabs(n) for n in paths.list_config_files())


def test_get_config_file_unknown_names_close_matches():
    with pytest.raises(FileNotFoundError, match="faster_rcnn_R_18_FPN_quick_synth_shapes"):
        paths.get_config_file("quick_schedules/faster_rcnn_R18_FPN_quick_synth_shapes.yaml")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        paths.get_config_file("nope.yaml")


def test_get_config_file_stays_inside_configs():
    with pytest.raises(FileNotFoundError):
        paths.get_config_file("../setup.py")


def test_get_config_file_installed(installed_layout):
    assert paths.configs_root() == str(installed_layout)
    assert paths.get_config_file("quick_schedules/leaf.yaml") == str(
        installed_layout / "quick_schedules" / "leaf.yaml"
    )
    assert paths.list_config_files() == ["Base.yaml", "quick_schedules/leaf.yaml"]


def test_installed_without_configs_says_so(tmp_path, monkeypatch, installed_layout):
    monkeypatch.setattr(paths, "PACKAGED_CONFIGS_ROOT", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no configs directory"):
        paths.get_config_file("quick_schedules/leaf.yaml")


def test_resolve_config_file_installed(installed_layout):
    """Every documented spelling works when installed; the relative _BASE_ still resolves."""
    leaf = str(installed_layout / "quick_schedules" / "leaf.yaml")
    for spelling in ("quick_schedules/leaf.yaml", "configs/quick_schedules/leaf.yaml", leaf):
        assert paths.resolve_config_file(spelling) == leaf
    cfg = get_cfg()
    cfg.merge_from_file(paths.resolve_config_file("quick_schedules/leaf.yaml"))
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.MASK_ON is False


def test_resolve_config_file_prefers_a_path_that_exists(tmp_path, installed_layout):
    local = tmp_path / "quick_schedules" / "leaf.yaml"  # tmp_path is the current directory
    local.parent.mkdir()
    local.write_text("SOLVER:\n  MAX_ITER: 3\n")
    assert paths.resolve_config_file("quick_schedules/leaf.yaml") == str(local)


def test_resolve_config_file_names_where_it_looked(installed_layout):
    with pytest.raises(FileNotFoundError, match="configs/HNMS/nope.yaml") as e:
        paths.resolve_config_file("configs/HNMS/nope.yaml")
    assert str(installed_layout / "HNMS" / "nope.yaml") in str(e.value)


def test_resolve_config_file_in_checkout_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = os.path.join(paths.REPO_ROOT, "configs", QUICK)
    for spelling in (QUICK, f"configs/{QUICK}", expected):
        assert paths.resolve_config_file(spelling) == expected
