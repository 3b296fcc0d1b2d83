"""Run a trained detector of this repository on your own images.

Writes one picture per image with the predictions drawn on it (Detectron2's ``Visualizer``) and
one ``predictions.json`` for all of them::

    python -m d2kit.predict --config-file CONFIG --input IMAGE_OR_FOLDER [...] --output DIR \\
        [--score-threshold 0.5] MODEL.WEIGHTS model_final.pth [KEY VALUE ...]

(installed, the console script ``d2kit-predict`` runs the same). ``CONFIG`` is any config of the
repository, as a path or relative to ``configs/``; every project's keys are known. ``--input``
takes image files (anything Detectron2's ``read_image`` reads: png, jpg, tif, ...), folders (their
images with the extensions of :data:`IMAGE_EXTENSIONS`, not recursive, sorted by name) and glob
patterns. Options go before the ``KEY VALUE`` overrides.

``predictions.json`` (COCO style; ``pycocotools.coco.COCO`` loads it)::

    {"config": ..., "weights": ..., "score_threshold": 0.5,
     "images": [{"id": 1, "file_name": "/abs/a.png", "height": 480, "width": 640,
                 "visualization": "a.png"}, ...],
     "categories": [{"id": 1, "name": "tree"}, ...],
     "annotations": [{"id": 1, "image_id": 1, "file_name": "/abs/a.png", "category_id": 1,
                      "bbox": [x, y, w, h], "score": 0.93}, ...]}

``bbox`` is XYWH in the original image's pixels; ``category_id`` is the dataset's id (the
contiguous class index mapped back through the test set's ``thing_dataset_id_to_contiguous_id``
when it has one, as ``COCOEvaluator`` writes them); ``annotations`` is a COCO results list
(``coco_gt.loadRes(d["annotations"])`` once the image ids match your ground truth). Only the
detections with ``score >= --score-threshold`` are drawn and written (the model's own test
threshold, e.g. ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``, applies first).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import re

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from .composed import check_composition_is_used
from .config import add_d2kit_config
from .paths import resolve_config_file
from .projects import project_config_fns

__all__ = [
    "IMAGE_EXTENSIONS",
    "PREDICTIONS_FILE",
    "find_images",
    "setup_cfg",
    "check_weights",
    "predict",
    "main",
]

logger = logging.getLogger(__name__)

#: What a folder given to ``--input`` is searched for (case-insensitive).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
#: The json written under the output folder.
PREDICTIONS_FILE = "predictions.json"

_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Za-z0-9_]+)+$")


def find_images(inputs: list[str]) -> list[str]:
    """The image files named by ``inputs`` (files, folders, glob patterns), in order, each once.

    Raises:
        FileNotFoundError: an input that does not exist (or a pattern that matches nothing).
        ValueError: a folder without images, or no image at all.
    """
    found: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(
                n
                for n in os.listdir(item)
                if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, n))
            )
            if not names:
                raise ValueError(
                    f"no images found in folder {item} (looked for {', '.join(IMAGE_EXTENSIONS)})"
                )
            found += [os.path.join(item, n) for n in names]
        elif os.path.isfile(item):
            found.append(item)
        elif glob.has_magic(item):
            matches = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not matches:
                raise FileNotFoundError(f"input pattern matches no file: {item}")
            found += matches
        else:
            raise FileNotFoundError(f"input not found: {item}")
    images = list(dict.fromkeys(os.path.abspath(p) for p in found))
    if not images:
        raise ValueError(f"no images found in {inputs}")
    return images


def setup_cfg(config_file: str, opts: list[str]):
    """The frozen config: defaults, the shared and every project's keys, the file, ``opts``.

    A config that asks for CUDA on a machine without a GPU runs on the CPU.
    """
    cfg = get_cfg()
    add_d2kit_config(cfg)
    for add_config in project_config_fns():
        add_config(cfg)
    cfg.merge_from_file(resolve_config_file(config_file))
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but no GPU is visible: using the CPU.", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def check_weights(weights: str) -> None:
    """Raise unless ``weights`` (``MODEL.WEIGHTS``) names a checkpoint: an existing file, or a
    URL (``detectron2://``, ``https://``, ...) for Detectron2's checkpointer to fetch.

    Raises:
        ValueError: empty (a model with random weights predicts nothing useful).
        FileNotFoundError: a local path that is not a file.
    """
    if not weights:
        raise ValueError(
            "MODEL.WEIGHTS is empty: pass the trained model, e.g. "
            "MODEL.WEIGHTS output/model_final.pth (after the options)"
        )
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS file not found: {weights}")


def _metadata(cfg):
    names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    return MetadataCatalog.get(names[0]) if names else None


def _categories(metadata, classes_seen: set[int]) -> tuple[list[dict], dict[int, int]]:
    """COCO categories and the map from the model's class index to their ids."""
    names = list(getattr(metadata, "thing_classes", None) or [])
    to_id = {v: k for k, v in getattr(metadata, "thing_dataset_id_to_contiguous_id", {}).items()}
    indices = sorted(set(range(len(names))) | classes_seen)
    categories = [
        {"id": int(to_id.get(i, i)), "name": names[i] if i < len(names) else f"class {i}"}
        for i in indices
    ]
    return categories, {i: int(to_id.get(i, i)) for i in indices}


def _visualization_names(images: list[str]) -> list[str]:
    """``<stem>.png`` per image, ``<stem>_<n>.png`` where two images share a stem."""
    names, used = [], set()
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        name, n = f"{stem}.png", 1
        while name in used:
            name, n = f"{stem}_{n}.png", n + 1
        used.add(name)
        names.append(name)
    return names


def _model_input(path: str, input_format: str) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image for drawing, image in the model's ``INPUT.FORMAT``), both HWC uint8."""
    rgb = read_image(path, format="RGB")
    if input_format == "RGB":
        return rgb, rgb
    if input_format == "BGR":
        return rgb, np.ascontiguousarray(rgb[:, :, ::-1])
    return rgb, read_image(path, format=input_format)


@torch.no_grad()
def predict(
    cfg,
    images: list[str],
    output_dir: str,
    score_threshold: float = 0.5,
    config_file: str | None = None,
) -> dict:
    """Run ``cfg``'s model (weights from ``cfg.MODEL.WEIGHTS``) on ``images``; write the drawn
    pictures and :data:`PREDICTIONS_FILE` under ``output_dir``; return the json's content
    (``config_file`` is only recorded in it)."""
    check_weights(cfg.MODEL.WEIGHTS)
    os.makedirs(output_dir, exist_ok=True)
    vis_names = _visualization_names(images)
    check_composition_is_used(cfg)  # as the Trainer's build_model: no unused MODEL.COMPOSE key
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    metadata = _metadata(cfg)
    resize = T.ResizeShortestEdge(
        [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
    )
    arch = cfg.MODEL.META_ARCHITECTURE
    image_entries, detections = [], []
    for image_id, (path, vis_name) in enumerate(zip(images, vis_names), 1):
        try:
            rgb, image = _model_input(path, cfg.INPUT.FORMAT)
        except Exception as e:
            raise ValueError(f"cannot read image {path}: {e}") from e
        height, width = rgb.shape[:2]
        resized = resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        try:
            output = model([{"image": tensor, "height": height, "width": width}])[0]
        except KeyError as e:
            raise ValueError(
                f"MODEL.META_ARCHITECTURE {arch!r} needs inputs other than an image (missing "
                f"{e}); d2kit.predict runs detectors that take images"
            ) from e
        if "instances" not in output:
            raise ValueError(
                f"MODEL.META_ARCHITECTURE {arch!r} returns no detections ('instances') for an "
                f"image (it returned {sorted(output)}); d2kit.predict runs detectors"
            )
        instances = output["instances"].to("cpu")
        instances = instances[instances.scores >= score_threshold]
        drawn = Visualizer(rgb, metadata).draw_instance_predictions(instances).get_image()
        Image.fromarray(drawn).save(os.path.join(output_dir, vis_name))
        image_entries.append(
            dict(id=image_id, file_name=path, height=height, width=width, visualization=vis_name)
        )
        boxes = instances.pred_boxes.tensor.numpy().astype(np.float64)
        for box, score, cls in zip(
            boxes, instances.scores.tolist(), instances.pred_classes.tolist()
        ):
            x1, y1, x2, y2 = box.tolist()
            detections.append(
                dict(
                    image_id=image_id,
                    file_name=path,
                    cls=int(cls),
                    score=float(score),
                    bbox=[x1, y1, x2 - x1, y2 - y1],
                )
            )
    categories, to_id = _categories(metadata, {d["cls"] for d in detections})
    annotations = [
        dict(id=k, image_id=d["image_id"], file_name=d["file_name"],
             category_id=to_id[d["cls"]], bbox=d["bbox"], score=d["score"])
        for k, d in enumerate(detections, 1)
    ]  # fmt: skip
    result = dict(
        config=config_file,
        weights=cfg.MODEL.WEIGHTS,
        score_threshold=score_threshold,
        images=image_entries,
        categories=categories,
        annotations=annotations,
    )
    with open(os.path.join(output_dir, PREDICTIONS_FILE), "w") as f:
        f.write(_dumps(result))
    return result


def _dumps(result: dict) -> str:
    """The json with one line per key, image, category and detection."""
    lines = []
    for key, value in result.items():
        if isinstance(value, list):
            items = ",\n".join(f"  {json.dumps(v)}" for v in value)
            lines.append(
                f"{json.dumps(key)}: [\n{items}\n ]" if value else f"{json.dumps(key)}: []"
            )
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value)}")
    return "{\n " + ",\n ".join(lines) + "\n}\n"


def _split_inputs(inputs: list[str], opts: list[str]) -> tuple[list[str], list[str]]:
    """``--input a.png MODEL.WEIGHTS w.pth`` (``--input`` last): argparse gives the overrides to
    ``--input``; move them back from the first token that looks like a config key and is not a
    file."""
    for i, item in enumerate(inputs):
        if _CONFIG_KEY.match(item) and not os.path.exists(item):
            return inputs[:i], inputs[i:] + list(opts)
    return inputs, list(opts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m d2kit.predict",
        description="Run a trained detector on images: drawn pictures and predictions.json.",
    )
    parser.add_argument("--config-file", required=True, help="a path, or one under configs/")
    parser.add_argument(
        "--input", nargs="+", required=True, help="image files, folders or glob patterns"
    )
    parser.add_argument("--output", required=True, help="folder for the pictures and the json")
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.5,
        help="draw and write the detections scored at least this (default 0.5)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="KEY VALUE config overrides, MODEL.WEIGHTS <checkpoint> among them",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """The command line (``argv`` defaults to ``sys.argv[1:]``); see the module docstring."""
    parser = build_parser()
    args = parser.parse_args(argv)
    inputs, opts = _split_inputs(args.input, args.opts)
    if not math.isfinite(args.score_threshold) or not 0.0 <= args.score_threshold <= 1.0:
        parser.error(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
        setup_logger()
        setup_logger(name="d2kit")
    try:
        images = find_images(inputs)
        cfg = setup_cfg(args.config_file, opts)
        check_weights(cfg.MODEL.WEIGHTS)
        out = os.path.abspath(args.output)
        clash = [
            p for p, n in zip(images, _visualization_names(images)) if os.path.join(out, n) == p
        ]
        if clash:
            raise ValueError(f"--output {args.output} would overwrite the input image {clash[0]}")
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    result = predict(
        cfg, images, args.output, args.score_threshold, resolve_config_file(args.config_file)
    )
    print(
        f"{len(result['images'])} images, {len(result['annotations'])} detections with score >= "
        f"{args.score_threshold:g}: pictures and {PREDICTIONS_FILE} in {args.output}"
    )


if __name__ == "__main__":
    main()  # pragma: no cover
