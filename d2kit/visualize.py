"""Draw a model's predictions next to the ground truth with Detectron2's Visualizer."""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.utils.visualizer import Visualizer

__all__ = ["draw_predictions"]


@torch.no_grad()
def draw_predictions(
    cfg, model, dataset_name: str, output_dir: str, num_images: int = 4, score_thresh: float = 0.5
) -> list[str]:
    """Run ``model`` on the first ``num_images`` images of ``dataset_name`` and write PNGs.

    Each PNG shows the ground truth (left) and the predictions with score ≥ ``score_thresh``
    (right). Returns the written paths.
    """
    os.makedirs(output_dir, exist_ok=True)
    metadata = MetadataCatalog.get(dataset_name)
    resize = T.ResizeShortestEdge(
        [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
    )
    was_training = model.training
    model.eval()
    paths = []
    for record in DatasetCatalog.get(dataset_name)[:num_images]:
        image_bgr = cv2.imread(record["file_name"], cv2.IMREAD_COLOR)
        height, width = image_bgr.shape[:2]
        image = resize.get_transform(image_bgr).apply_image(image_bgr)
        tensor = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        outputs = model([{"image": tensor, "height": height, "width": width}])[0]
        instances = outputs["instances"].to("cpu")
        instances = instances[instances.scores >= score_thresh]
        rgb = image_bgr[:, :, ::-1]
        gt = Visualizer(rgb, metadata, scale=2.0).draw_dataset_dict(record).get_image()
        pred = Visualizer(rgb, metadata, scale=2.0).draw_instance_predictions(instances)
        canvas = np.concatenate([gt, pred.get_image()], axis=1)
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        path = os.path.join(output_dir, f"{stem}.png")
        cv2.imwrite(path, canvas[:, :, ::-1])
        paths.append(path)
    model.train(was_training)
    return paths
