"""Every YAML under configs/ merges on top of the defaults plus every project's keys."""

import glob
import os

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from d2kit.config import add_d2kit_config
from d2kit.paths import CONFIGS_ROOT
from d2kit.projects import project_config_fns

ALL_CONFIGS = sorted(glob.glob(os.path.join(CONFIGS_ROOT, "**", "*.yaml"), recursive=True))
QUICK_CONFIGS = [p for p in ALL_CONFIGS if "quick_schedules" in p]


def _config_fns():
    return [add_d2kit_config, *project_config_fns()]


def _merged(path):
    cfg = get_cfg()
    for add_config in _config_fns():
        add_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def test_configs_exist():
    names = {os.path.relpath(p, CONFIGS_ROOT) for p in ALL_CONFIGS}
    for required in [
        "Base-RCNN-FPN.yaml",
        "Base-RetinaNet.yaml",
        "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
        "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
        "quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml",
        "quick_schedules/retinanet_R_18_FPN_quick_synth_shapes.yaml",
    ]:
        assert required in names


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: os.path.relpath(p, CONFIGS_ROOT))
def test_config_merges(path):
    cfg = _merged(path)
    assert cfg.VERSION == 2
    text = open(path).read()
    assert "!!python" not in text, "no unsafe YAML tags"


@pytest.mark.parametrize("path", QUICK_CONFIGS, ids=lambda p: os.path.relpath(p, CONFIGS_ROOT))
def test_quick_config_builds_on_cpu_from_scratch(path):
    cfg = _merged(path)
    assert cfg.MODEL.WEIGHTS == "", "quick configs train from scratch (no downloads)"
    # synthetic sets, or the NEON tree crowns (the one real set, fetched with pip on first load)
    names = cfg.DATASETS.TRAIN + cfg.DATASETS.TEST
    assert all(name.startswith(("synth_", "neon_trees_")) for name in names)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) < 30e6


def test_coco_leaves_keep_the_paper_recipe():
    cfg = _merged(os.path.join(CONFIGS_ROOT, "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.SOLVER.MAX_ITER == 90000
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",)
    assert cfg.MODEL.WEIGHTS.endswith("R-50.pkl")
