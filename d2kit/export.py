"""Export a model of this repository as TorchScript, by tracing.

    python -m d2kit.export --config-file CONFIG --output DIR [--format torchscript]
        [--sample-image PATH] [--copy-library] MODEL.WEIGHTS WEIGHTS [KEY VALUE ...]

The model is built as ``python -m d2kit.engine.train_net`` builds it (the shared keys and every
project's keys, then the YAML, then the overrides), wrapped in Detectron2's ``TracingAdapter`` and
traced with ``torch.jit.trace`` on one sample image: ``--sample-image``, else the first image of
the config's test set, else a synthetic scene of the test size. The traced model is checked
against the Python model on that image before it is written.

Written to ``DIR``:

- ``model.ts``: ``model(image, height, width) -> (pred_boxes, scores, pred_classes, ...)``,
  where ``image`` is a uint8 [3, H, W] tensor in ``INPUT.FORMAT`` (BGR), already resized as the
  test-time ``ResizeShortestEdge`` does, and ``height``, ``width`` (int64 0-dim tensors) the size
  of the original image, in whose coordinates the detections are (as Detectron2's
  ``model([{"image", "height", "width"}])``);
- ``export_info.json``: the config, weights, input format, the order of the output fields, and
  the op libraries the file needs at run time (``torchvision`` for Detectron2's NMS and RoIAlign,
  ``hnms._C`` for HNMS and Soft-NMS);
- ``export_runtime.py``: a loader that imports torch only (see :mod:`d2kit.export_runtime`);
- with ``--copy-library``, the compiled ``hnms._C`` library, when the model needs it.

Models that run HNMS or Soft-NMS need the compiled op (``hnms._C``) to be traced: its pure-torch
fallback loops in Python over data-dependent counts, which a trace cannot record, so exporting
such a model without it stops with an error saying what to build.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import logging
import os
import platform
import shutil
import sys
import warnings

import numpy as np
import torch

__all__ = [
    "EXPORT_INFO",
    "MODEL_FILE",
    "OUTPUT_FIELDS",
    "build_export_model",
    "calibrate_batch_norm",
    "compare_detections",
    "export_model",
    "main",
    "prepare_input",
    "python_detections",
    "sample_input",
    "setup_cfg",
    "trace_model",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.ts"
EXPORT_INFO = "export_info.json"
RUNTIME_FILE = "export_runtime.py"
#: Output fields that come first, in this order, when the model predicts them; any other field
#: of the predicted Instances follows in alphabetical order (e.g. Rank-NMS's cls_scores and
#: rank_scores).
OUTPUT_FIELDS = ("pred_boxes", "scores", "pred_classes", "pred_masks", "pred_keypoints")
#: Tolerance of the check of the traced model against the Python model (boxes and scores).
ATOL = 1e-4
#: Op namespaces that come with torch itself.
_TORCH_NAMESPACES = {"aten", "prim", "quantized", "prepacked", "profiler"}
_PROJECT_DIRS = ("d2kit", "hnms", "overlap_sampler", "noisy_anchors", "rank_nms", "ref_nms")


# ---------------------------------------------------------------------------------------------
# Config, model and input
# ---------------------------------------------------------------------------------------------
def setup_cfg(config_file: str, opts=()):
    """The frozen config of ``config_file`` (a path, or one relative to ``configs/``) with the
    shared keys and every installed project's keys, then ``opts`` (KEY VALUE ...). A CUDA device
    without a visible GPU becomes the CPU."""
    from detectron2.config import get_cfg

    from .config import add_d2kit_config
    from .paths import resolve_config_file
    from .projects import project_config_fns

    cfg = get_cfg()
    add_d2kit_config(cfg)
    for add_config in project_config_fns():
        add_config(cfg)
    cfg.merge_from_file(resolve_config_file(config_file))
    cfg.merge_from_list([str(o) for o in opts])
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but no GPU is visible: using the CPU.", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def build_export_model(cfg, seed: int = 0):
    """The model of ``cfg`` in eval mode, with ``cfg.MODEL.WEIGHTS`` loaded; without weights the
    initialisation is seeded with ``seed`` (the same weights on every run)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    import d2kit  # noqa: F401  (registers the datasets and the composed heads)

    torch.manual_seed(seed)
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()


@torch.no_grad()
def calibrate_batch_norm(model, batched_inputs) -> None:
    """Set the statistics of every BatchNorm layer (trainable or frozen) to those of
    ``batched_inputs``.

    For randomly initialised models (tests, benchmarks, exports without weights): with the
    initial statistics (mean 0, variance 1) the activations of an untrained ResNet grow from
    layer to layer and every class score saturates at 1, so that detections tie. One inference
    pass (without the post-processing, where the model has it) sets them: BatchNorm layers run in
    training mode with a cumulative average, and a FrozenBatchNorm2d takes the running mean and
    variance of its inputs before it normalises them.

    Args:
        model: a detector in eval mode.
        batched_inputs: Detectron2 inputs (list of dicts with "image"); at least two images when
            a BatchNorm layer sees a 1 x 1 feature map (RetinaNet's P7 on small images).
    """
    from detectron2.layers import FrozenBatchNorm2d

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    sums = {}

    def set_statistics(module, args):
        x = args[0].detach().double()
        count, total, squares = sums.get(module, (0, 0.0, 0.0))
        count += x.numel() // x.shape[1]
        total = total + x.sum(dim=(0, 2, 3))
        squares = squares + (x * x).sum(dim=(0, 2, 3))
        sums[module] = (count, total, squares)
        mean = total / count
        module.running_mean.copy_(mean)
        module.running_var.copy_((squares / count - mean * mean).clamp(min=0))

    hooks = [
        m.register_forward_pre_hook(set_statistics)
        for m in model.modules()
        if isinstance(m, FrozenBatchNorm2d)
    ]
    try:
        if hasattr(model, "inference"):  # R-CNN: no mask pasting, no rescaling
            model.inference(batched_inputs, do_postprocess=False)
        else:
            model(batched_inputs)
    finally:
        for hook in hooks:
            hook.remove()
        for m, momentum, training in saved:
            m.momentum = momentum
            m.train(training)


def prepare_input(cfg, image_hwc: np.ndarray) -> dict:
    """Detectron2's test-time input of an HWC uint8 image in ``cfg.INPUT.FORMAT``: the image
    resized by the test augmentation (``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``) as a
    [3, H, W] uint8 tensor, and the original ``height`` and ``width``."""
    from detectron2.data import detection_utils
    from detectron2.data import transforms as T

    height, width = image_hwc.shape[:2]
    aug_input = T.AugInput(image_hwc)
    T.AugmentationList(detection_utils.build_augmentation(cfg, is_train=False))(aug_input)
    image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
    return {"image": image, "height": height, "width": width}


def _synthetic_image(cfg) -> np.ndarray:
    from .data.synthetic import SYNTH_SPECS, generate_image

    size = min(cfg.INPUT.MIN_SIZE_TEST or 128, cfg.INPUT.MAX_SIZE_TEST or 128)
    spec = dataclasses.replace(SYNTH_SPECS["synth_shapes_val"], image_size=int(size))
    image_bgr, _ = generate_image(spec, 0)
    return _convert_bgr(image_bgr, cfg.INPUT.FORMAT)


def _convert_bgr(image_bgr: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "BGR":
        return image_bgr
    if fmt == "RGB":
        return np.ascontiguousarray(image_bgr[:, :, ::-1])
    raise ValueError(f"INPUT.FORMAT {fmt!r}: a synthetic sample is drawn in BGR or RGB only")


def sample_input(cfg, sample_image: str | None = None) -> tuple[dict, str]:
    """The input to trace with, and where it comes from: ``sample_image`` if given, else the
    first image of ``cfg.DATASETS.TEST[0]``, else a deterministic synthetic scene (shapes on a
    background) of the test size."""
    from detectron2.data import DatasetCatalog, detection_utils

    if sample_image:
        image = detection_utils.read_image(sample_image, format=cfg.INPUT.FORMAT)
        return prepare_input(cfg, image), os.path.abspath(sample_image)
    for name in cfg.DATASETS.TEST[:1]:
        try:
            record = DatasetCatalog.get(name)[0]
            image = detection_utils.read_image(record["file_name"], format=cfg.INPUT.FORMAT)
            return prepare_input(cfg, image), f"{name}: {record['file_name']}"
        except Exception as e:  # not registered, or its files are not on this machine
            logger.warning("No image of the test set %s could be read (%s)", name, e)
    image = _synthetic_image(cfg)
    return prepare_input(cfg, image), f"synthetic scene {image.shape[1]}x{image.shape[0]}"


# ---------------------------------------------------------------------------------------------
# Tracing
# ---------------------------------------------------------------------------------------------
def _field_tensor(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else value.tensor  # Boxes, BitMasks


def _ordered_fields(instances) -> list[str]:
    names = list(instances.get_fields())
    first = [n for n in OUTPUT_FIELDS if n in names]
    return first + sorted(n for n in names if n not in first)


def python_detections(model, inputs: dict) -> dict[str, torch.Tensor]:
    """The Python model's detections of one input, {field: tensor} (boxes as [D, 4])."""
    with torch.no_grad():
        instances = model([inputs])[0]["instances"].to("cpu")
    return {n: _field_tensor(instances.get(n)) for n in _ordered_fields(instances)}


def _is_project_file(filename: str) -> bool:
    from .paths import REPO_ROOT

    path = os.path.abspath(filename)
    return any(path.startswith(os.path.join(REPO_ROOT, d) + os.sep) for d in _PROJECT_DIRS)


def trace_model(model, inputs: dict):
    """Trace ``model`` on one input with Detectron2's ``TracingAdapter``.

    Returns:
        (the traced module, the output field names in order, the TracerWarnings raised in this
        repository's code as "file:line: message" strings; a model whose inference has no
        branch on its data raises none).
    """
    from detectron2.export import TracingAdapter

    fields: list[str] = []

    def inference(model, image, height, width):
        out = model([{"image": image, "height": height, "width": width}])[0]["instances"]
        if not fields:
            fields.extend(_ordered_fields(out))
        return tuple(_field_tensor(out.get(n)) for n in fields)

    args = (
        inputs["image"],
        torch.tensor(inputs["height"], dtype=torch.int64),
        torch.tensor(inputs["width"], dtype=torch.int64),
    )
    adapter = TracingAdapter(model, args, inference_func=inference).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    ours = sorted(
        {
            f"{os.path.relpath(w.filename)}:{w.lineno}: {str(w.message).splitlines()[0]}"
            for w in caught
            if issubclass(w.category, torch.jit.TracerWarning) and _is_project_file(w.filename)
        }
    )
    return traced, fields, ours


def _graph_ops(module) -> list[str]:
    """Every op ("namespace::name") of a traced or scripted module's graph, nested blocks and
    called functions included."""
    ops: set[str] = set()

    def walk(block):
        for node in block.nodes():
            ops.add(node.kind())
            for sub in node.blocks():
                walk(sub)

    walk(module.inlined_graph)
    return sorted(ops)


def _library_file(namespace: str) -> str | None:
    """The shared library that registers ``torch.ops.<namespace>.*``, for the namespaces of the
    op libraries this repository's models use."""
    if namespace == "hnms":
        from hnms import _ext

        module = _ext.load()
        return os.path.abspath(module.__file__) if module is not None else None
    if namespace == "torchvision":
        import torchvision

        found = glob.glob(os.path.join(os.path.dirname(torchvision.__file__), "_C*.so"))
        found += glob.glob(os.path.join(os.path.dirname(torchvision.__file__), "_C*.pyd"))
        return os.path.abspath(found[0]) if found else None
    return None


def _libraries(ops: list[str], copy_to: str | None) -> list[dict]:
    """What must be loaded, besides torch, to run a graph with ``ops``: per op namespace, the
    library file, the Python package whose directory holds it, and its path here."""
    namespaces = sorted({op.split("::")[0] for op in ops} - _TORCH_NAMESPACES)
    libraries = []
    for ns in namespaces:
        entry = {"namespace": ns, "ops": [op for op in ops if op.startswith(ns + "::")]}
        path = _library_file(ns)
        if path is not None:
            entry.update(package=ns, file=os.path.basename(path), path=path)
            if copy_to is not None and ns == "hnms":
                shutil.copy2(path, os.path.join(copy_to, entry["file"]))
                entry["copied"] = True
        libraries.append(entry)
    return libraries


def _canonical_order(detections: dict) -> torch.Tensor:
    """The permutation that sorts detections by decreasing score, then class, then box: the
    order among equal scores is not defined (torchvision's batched NMS, e.g., breaks ties
    differently in its per-class loop and in the coordinate-offset form a trace records)."""
    keys = [
        *detections["pred_boxes"].unbind(1)[::-1],
        detections["pred_classes"],
        -detections["scores"],
    ]  # least significant first
    order = torch.arange(detections["scores"].shape[0])
    for key in keys:
        order = order[torch.sort(key.cpu()[order], stable=True).indices]
    return order


def _compare_in_order(expected: dict, actual: dict, atol: float, report: dict) -> bool:
    for name, value in expected.items():
        other = actual[name].to(value.device)
        if value.shape != other.shape:
            return False
        if value.is_floating_point():
            diff = float((value - other).abs().max()) if value.numel() else 0.0
            report[f"max_abs_diff_{name}"] = diff
            if not diff <= atol:
                return False
        elif not torch.equal(value, other):
            return False
    return True


def compare_detections(expected: dict, actual: dict, atol: float = ATOL) -> dict:
    """How two sets of detections ({field: tensor}, as :func:`python_detections`) agree.

    ``equal``: the same fields and number of detections, equal classes (and masks), boxes and
    scores within ``atol``, in the same order or, where scores tie, in another order
    (``ties_reordered``).
    """
    report = {"fields_equal": list(expected) == list(actual)}
    count = expected["scores"].shape[0]
    report["num_detections"] = [count, actual["scores"].shape[0]]
    equal = report["fields_equal"] and count == actual["scores"].shape[0]
    if equal and not _compare_in_order(expected, actual, atol, report):
        first, second = _canonical_order(expected), _canonical_order(actual)
        equal = _compare_in_order(
            {n: v[first] for n, v in expected.items()},
            {n: v[second.to(v.device)] for n, v in actual.items()},
            atol,
            report,
        )
        report["ties_reordered"] = equal
    report["equal"] = bool(equal)
    return report


def _run_traced(traced, fields: list[str], inputs: dict) -> dict:
    with torch.no_grad():
        out = traced(
            inputs["image"],
            torch.tensor(inputs["height"], dtype=torch.int64),
            torch.tensor(inputs["width"], dtype=torch.int64),
        )
    return {n: t.to("cpu") for n, t in zip(fields, out)}


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
def export_model(
    cfg,
    model,
    inputs: dict,
    output_dir: str,
    *,
    sample_source: str = "",
    config_file: str = "",
    opts=(),
    copy_library: bool = False,
    extra_info: dict | None = None,
) -> dict:
    """Trace ``model`` (built from ``cfg``) on ``inputs`` and write ``output_dir``/model.ts,
    export_info.json and export_runtime.py.

    Returns:
        the contents of export_info.json; ``info["check"]["equal"]``: the traced model gave the
        Python model's detections on ``inputs``.
    Raises:
        RuntimeError: saying what to build, for a model that runs HNMS or Soft-NMS without the
            compiled op.
    """
    from .paths import resolve_config_file

    os.makedirs(output_dir, exist_ok=True)
    expected = python_detections(model, inputs)
    traced, fields, tracer_warnings = trace_model(model, inputs)
    for w in tracer_warnings:
        logger.warning("TracerWarning in %s", w)
    check = compare_detections(expected, _run_traced(traced, fields, inputs))
    traced.save(os.path.join(output_dir, MODEL_FILE))
    shutil.copy2(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), RUNTIME_FILE),
        os.path.join(output_dir, RUNTIME_FILE),
    )
    ops = _graph_ops(traced)
    info = {
        "format": "torchscript",
        "file": MODEL_FILE,
        "config": resolve_config_file(config_file) if config_file else None,
        "config_overrides": [str(o) for o in opts],
        "weights": cfg.MODEL.WEIGHTS or None,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "device": str(cfg.MODEL.DEVICE),
        "input": {
            "arguments": ["image", "height", "width"],
            "image": "uint8 [3, H, W], channels in `format`, resized as `resize` says",
            "format": cfg.INPUT.FORMAT,
            "resize": {
                "op": "ResizeShortestEdge",
                "short_edge": cfg.INPUT.MIN_SIZE_TEST,
                "max_size": cfg.INPUT.MAX_SIZE_TEST,
            },
            "height_width": "int64 0-dim tensors: size of the original image; the detections "
            "are in its coordinates",
        },
        "outputs": fields,
        "output_shapes": {n: _shape_text(t) for n, t in expected.items()},
        "libraries": _libraries(ops, output_dir if copy_library else None),
        "classes": _class_names(cfg),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "sample": sample_source,
        "check": check,
        "tracer_warnings_in_project_code": tracer_warnings,
        **(extra_info or {}),
    }
    with open(os.path.join(output_dir, EXPORT_INFO), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    return info


def _shape_text(t: torch.Tensor) -> str:
    """e.g. "float32 [D, 4]": dtype and shape, D the number of detections."""
    return f"{str(t.dtype).replace('torch.', '')} [{', '.join(['D', *map(str, t.shape[1:])])}]"


def _class_names(cfg):
    from detectron2.data import MetadataCatalog

    for name in cfg.DATASETS.TEST[:1]:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes:
            return list(classes)
    return None


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring); returns 0 when the traced model gave the
    Python model's detections on the sample image, 1 otherwise (the files are written)."""
    parser = argparse.ArgumentParser(
        prog="python -m d2kit.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config-file", required=True, help="a path, or one under configs/")
    parser.add_argument("--output", required=True, help="directory to write the export to")
    parser.add_argument(
        "--format",
        default="torchscript",
        choices=["torchscript"],
        help="torchscript (traced); ONNX is not offered: see the README's Deploy section",
    )
    parser.add_argument("--sample-image", default=None, help="image to trace with")
    parser.add_argument(
        "--copy-library",
        action="store_true",
        help="copy the compiled hnms._C library next to model.ts (when the model needs it)",
    )
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed without weights")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    cfg = setup_cfg(args.config_file, args.opts)
    model = build_export_model(cfg, seed=args.seed)
    inputs, source = sample_input(cfg, args.sample_image)
    extra = {}
    if not cfg.MODEL.WEIGHTS:
        logger.warning(
            "MODEL.WEIGHTS is empty: exporting randomly initialised weights (seed %d), with "
            "BatchNorm statistics of the sample image",
            args.seed,
        )
        flipped = dict(inputs, image=inputs["image"].flip(-1))
        calibrate_batch_norm(model, [inputs, flipped])
        extra["random_init"] = {"seed": args.seed, "batch_norm_statistics_of": source}
    info = export_model(
        cfg,
        model,
        inputs,
        args.output,
        sample_source=source,
        config_file=args.config_file,
        opts=args.opts,
        copy_library=args.copy_library,
        extra_info=extra,
    )
    check = info["check"]
    print(
        f"wrote {os.path.join(args.output, MODEL_FILE)}: outputs {', '.join(info['outputs'])}; "
        f"libraries: {', '.join(lib['namespace'] for lib in info['libraries']) or 'none'}; "
        f"on the sample: {check['num_detections'][0]} detections, "
        f"{'equal to' if check['equal'] else 'DIFFERENT FROM'} the Python model's"
    )
    return 0 if check["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
