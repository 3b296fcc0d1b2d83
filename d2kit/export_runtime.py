"""Run a model exported by ``python -m d2kit.export`` with torch alone.

This file imports only torch: it loads the shared libraries that register the ops the graph
calls besides torch's own (``torchvision/_C.so`` for Detectron2's NMS and RoIAlign,
``hnms/_C*.so`` for HNMS and Soft-NMS) with ``torch.ops.load_library``, without importing their
Python packages, Detectron2 or this repository's packages. The export copies it next to
``model.ts``::

    import sys
    sys.path.insert(0, "exported")        # the export directory
    import export_runtime

    model = export_runtime.load("exported")                 # the libraries, then model.ts
    detections = model(image)   # uint8 [3, H, W] in export_info["input"]["format"] (BGR)
    detections["pred_boxes"], detections["scores"], detections["pred_classes"]

Without this file the same is three lines: ``torch.ops.load_library(path)`` for each library
``export_info.json`` lists (or ``import torchvision`` for its ops), ``torch.jit.load("model.ts")``,
then ``model(image, torch.tensor(height), torch.tensor(width))``, whose outputs are in the order
of ``export_info["outputs"]``.

The image must be resized as the model's test-time ``ResizeShortestEdge`` does
(``export_info["input"]["resize"]``); :func:`resize_shortest_edge` does it with torch's
antialiased bilinear interpolation, which is close to, not bit-identical with, Detectron2's PIL
resize (give it an already resized image to get exactly the Python model's detections).

    python export_runtime.py EXPORT_DIR IMAGE [--library hnms=PATH]    # prints the detections

(the command reads the image file with ``torchvision.io``; the functions above need torch only).
"""

from __future__ import annotations

import importlib.util
import json
import os

import torch

__all__ = ["ExportedModel", "load", "load_libraries", "read_info", "resize_shortest_edge"]

INFO_FILE = "export_info.json"


def read_info(export_dir: str) -> dict:
    """The contents of ``export_dir``/export_info.json."""
    with open(os.path.join(export_dir, INFO_FILE)) as f:
        return json.load(f)


def _package_dir(package: str) -> str | None:
    """The directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return locations[0] if locations else None


def _library_file(entry: dict, export_dir: str, given: str | None) -> str:
    candidates = [given] if given else []
    candidates.append(os.path.join(export_dir, entry["file"]))
    package_dir = _package_dir(entry.get("package", ""))
    if package_dir is not None:
        candidates.append(os.path.join(package_dir, entry["file"]))
    candidates.append(entry.get("path") or "")
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    fix = (
        "build it in the repository with `pip install --no-build-isolation -e .` (against this "
        "torch version), or export with --copy-library"
        if entry["namespace"] == "hnms"
        else f"install {entry.get('package', entry['namespace'])} for this torch version"
    )
    raise FileNotFoundError(
        f"the exported model calls torch.ops.{entry['namespace']}.* ({', '.join(entry['ops'])}), "
        f"registered by {entry['file']}, which is at none of {[c for c in candidates if c]}: "
        f"pass its path as libraries={{{entry['namespace']!r}: path}}, or {fix}"
    )


def load_libraries(
    info: dict, export_dir: str, libraries: dict[str, str] | None = None
) -> list[str]:
    """Load the shared libraries that register the ops the exported graph calls besides
    torch's own (``torch.ops.load_library``); returns their paths.

    Args:
        libraries: {namespace: path} to use instead of the default search: the copy in
            ``export_dir``, the directory of the installed package (found without importing
            it), then the path the library had at export time.
    """
    libraries = libraries or {}
    loaded = []
    for entry in info.get("libraries", []):
        ns = entry["namespace"]
        if "file" not in entry:
            raise RuntimeError(
                f"the exported model calls torch.ops.{ns}.* ({', '.join(entry['ops'])}); load "
                "the library that registers them (torch.ops.load_library) before torch.jit.load"
            )
        if all(_has_op(op) for op in entry["ops"]):
            continue  # already registered in this process
        path = _library_file(entry, export_dir, libraries.get(ns))
        torch.ops.load_library(path)
        loaded.append(path)
    return loaded


def _has_op(qualified: str) -> bool:
    ns, name = qualified.split("::")
    try:
        getattr(getattr(torch.ops, ns), name)
        return True
    except (AttributeError, RuntimeError):
        return False


def resize_shortest_edge(image: torch.Tensor, short_edge: int, max_size: int) -> torch.Tensor:
    """Resize a [3, H, W] uint8 image so that its short side is ``short_edge`` and its long side
    at most ``max_size``, with the output size Detectron2's ``ResizeShortestEdge`` computes
    (unchanged when it is already that size)."""
    h, w = image.shape[-2:]
    scale = short_edge / min(h, w)
    new_h, new_w = (short_edge, scale * w) if h < w else (scale * h, short_edge)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    new_h, new_w = int(new_h + 0.5), int(new_w + 0.5)
    if (new_h, new_w) == (h, w):
        return image
    resized = torch.nn.functional.interpolate(
        image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False,
        antialias=True,
    )  # fmt: skip
    return resized[0].round().clamp(0, 255).to(torch.uint8)


class ExportedModel:
    """An exported model and its export_info.json; calling it returns {field: tensor}."""

    def __init__(self, module, info: dict):
        self.module = module
        self.info = info
        self.outputs = list(info["outputs"])

    def __call__(self, image: torch.Tensor, height: int | None = None, width: int | None = None):
        """Detections of one image.

        Args:
            image: uint8 [3, H, W] in ``info["input"]["format"]``, resized as
                ``info["input"]["resize"]`` says.
            height, width: size of the original image, whose coordinates the detections are in
                (default: the image's own).
        Returns:
            {field: tensor} in the order of ``info["outputs"]``: ``pred_boxes`` float [D, 4]
            (x1, y1, x2, y2), ``scores`` float [D], ``pred_classes`` int64 [D], and e.g.
            ``pred_masks`` bool [D, height, width].
        """
        h = image.shape[-2] if height is None else height
        w = image.shape[-1] if width is None else width
        with torch.no_grad():
            out = self.module(
                image, torch.tensor(h, dtype=torch.int64), torch.tensor(w, dtype=torch.int64)
            )
        return dict(zip(self.outputs, out))


def load(
    export_dir: str, libraries: dict[str, str] | None = None, map_location="cpu"
) -> ExportedModel:
    """Load the libraries the exported model needs (:func:`load_libraries`), then the model of
    ``export_dir``."""
    info = read_info(export_dir)
    load_libraries(info, export_dir, libraries)
    module = torch.jit.load(os.path.join(export_dir, info["file"]), map_location=map_location)
    return ExportedModel(module.eval(), info)


def _read_image(path: str, fmt: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, read_image

    rgb = read_image(path, ImageReadMode.RGB)
    return rgb.flip(0) if fmt == "BGR" else rgb


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Detections of an exported model on an image.")
    parser.add_argument("export_dir")
    parser.add_argument("image", help="an image file (PNG or JPEG)")
    parser.add_argument(
        "--library",
        action="append",
        default=[],
        metavar="NAMESPACE=PATH",
        help="an op library to load instead of the one found, e.g. hnms=/path/hnms/_C.so",
    )
    args = parser.parse_args(argv)
    model = load(args.export_dir, dict(item.split("=", 1) for item in args.library))
    spec = model.info["input"]
    original = _read_image(args.image, spec["format"])
    image = resize_shortest_edge(original, spec["resize"]["short_edge"], spec["resize"]["max_size"])
    out = model(image, original.shape[-2], original.shape[-1])
    classes = model.info.get("classes")
    for box, score, cls in zip(out["pred_boxes"], out["scores"], out["pred_classes"]):
        name = classes[int(cls)] if classes else int(cls)
        print(f"{name}\t{float(score):.4f}\t" + " ".join(f"{float(v):.1f}" for v in box))


if __name__ == "__main__":
    main()
