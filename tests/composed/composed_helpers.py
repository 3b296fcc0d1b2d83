"""Helpers of the composition tests: configs with every project's keys and a tiny batch."""

from __future__ import annotations

import torch
from detectron2.config import get_cfg
from detectron2.structures import BitMasks, Boxes, Instances

from d2kit.config import add_d2kit_config
from d2kit.paths import CONFIGS_ROOT
from d2kit.projects import project_config_fns

QUICK = f"{CONFIGS_ROOT}/quick_schedules"
COMPOSED = f"{CONFIGS_ROOT}/Composed/quick_schedules"
FASTER = f"{QUICK}/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml"
MASK = f"{QUICK}/mask_rcnn_R_18_FPN_quick_synth_shapes.yaml"
CASCADE = f"{QUICK}/cascade_rcnn_R_18_FPN_quick_synth_shapes.yaml"
RETINA = f"{QUICK}/retinanet_R_18_FPN_quick_synth_shapes.yaml"
#: the shipped combinations: (1) ... (5) of the README
COMBINATIONS = {
    "retinanet_na_hnms_soft": "retinanet_noisy_anchors_hnms_soft_nms_R_18_FPN_quick_synth_shapes",
    "faster_na_hashrpn_os": (
        "faster_rcnn_noisy_anchors_hash_rpn_overlap_sampler_R_18_FPN_quick_synth_shapes"
    ),
    "faster_os_rank_hnms_soft": (
        "faster_rcnn_overlap_sampler_rank_nms_hnms_soft_nms_R_18_FPN_quick_synth_shapes"
    ),
    "mask_os_rank_hnms_soft": (
        "mask_rcnn_overlap_sampler_rank_nms_hnms_soft_nms_R_18_FPN_quick_synth_shapes"
    ),
    "all_in_one": "faster_rcnn_all_in_one_R_18_FPN_quick_synth_shapes",
}
COMBINATIONS = {k: f"{COMPOSED}/{v}.yaml" for k, v in COMBINATIONS.items()}


def composed_cfg(path: str, *opts):
    """The config at ``path`` with the shared keys and every project's, then ``opts``; CPU."""
    cfg = get_cfg()
    add_d2kit_config(cfg)
    for add_config in project_config_fns():
        add_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *[str(o) for o in opts]])
    return cfg


def tiny_batch(num_images: int = 2, size: int = 96, with_gt=True):
    """Images with two ground-truth shapes each (boxes, classes, masks), or none."""
    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(num_images):
        image = torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8).float()
        inst = Instances((size, size))
        if with_gt:
            inst.gt_boxes = Boxes(torch.tensor([[10.0, 12, 50, 60], [40, 30, 90, 80]]))
            inst.gt_classes = torch.tensor([0, 2])
            masks = torch.zeros(2, size, size, dtype=torch.bool)
            masks[0, 12:60, 10:50] = True
            masks[1, 30:80, 40:90] = True
        else:
            inst.gt_boxes = Boxes(torch.zeros(0, 4))
            inst.gt_classes = torch.zeros(0, dtype=torch.int64)
            masks = torch.zeros(0, size, size, dtype=torch.bool)
        inst.gt_masks = BitMasks(masks)
        batch.append({"image": image, "instances": inst, "height": size, "width": size})
    return batch
