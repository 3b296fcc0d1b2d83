"""TorchScript export (d2kit.export): every quick config traces, and the exported file, run in
one fresh process that loads torch and the op libraries only, gives the Python model's
detections.

The models are built once (module fixture) with seeded random weights whose BatchNorm statistics
come from the test images (:func:`d2kit.export.calibrate_batch_norm`; with the initial ones every
score saturates and the detections tie), and test thresholds low enough that every model
detects, capped high enough that the number of detections is the suppression's, so it differs
from image to image. Every model is traced on validation image 0 and checked on it and on a
crop of image 1 (other content, another size: the trace is not tied to its input). One
subprocess runs all of them.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from d2kit import export
from d2kit.data.synthetic import SYNTH_SPECS, generate_image
from d2kit.paths import CONFIGS_ROOT
from d2kit.testing import BLOCK_COMPILED_OP

QUICK_DIRS = (
    "quick_schedules",
    "Composed/quick_schedules",
    "HNMS/quick_schedules",
    "RankNMS/quick_schedules",
)
CONFIGS = [
    os.path.relpath(path, CONFIGS_ROOT)
    for folder in QUICK_DIRS
    for path in sorted(glob.glob(os.path.join(CONFIGS_ROOT, folder, "*.yaml")))
    if not os.path.basename(path).startswith("Base-")
]
IDS = [os.path.splitext(os.path.basename(c))[0] for c in CONFIGS]
# Untrained heads score low (RetinaNet's about its prior 0.01): thresholds under which every
# model detects, and a cap above the number of detections the suppression leaves.
OPTS = (
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.3",
    "MODEL.RETINANET.SCORE_THRESH_TEST", "0.015",
    "TEST.DETECTIONS_PER_IMAGE", "1000",
)  # fmt: skip
#: packages the fresh process must not import
FORBIDDEN = ("detectron2", "d2kit", "hnms", "overlap_sampler", "noisy_anchors", "rank_nms",
             "ref_nms", "fvcore", "torchvision")  # fmt: skip
HNMS_METHODS = ("HNMS/", "Composed/")  # configs that run HNMS or Soft-NMS
#: a small model with the HNMS pre-filter and Soft-NMS, for the command-line tests
HNMS_CONFIG = os.path.join(
    "Composed/quick_schedules",
    "retinanet_noisy_anchors_hnms_soft_nms_R_18_FPN_quick_synth_shapes.yaml",
)

RUNNER = textwrap.dedent(
    """
    import importlib.util, json, os, sys
    import torch

    torch.set_num_threads(1)
    root, names = sys.argv[1], json.loads(sys.argv[2])
    first = os.path.join(root, names[0], "export_runtime.py")  # the copy an export ships
    spec = importlib.util.spec_from_file_location("export_runtime", first)
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    loaded = {}
    for name in names:
        folder = os.path.join(root, name)
        model = runtime.load(folder)
        loaded[name] = sorted(e["namespace"] for e in model.info["libraries"])
        outputs = [model(x["image"], x["height"], x["width"])
                   for x in torch.load(os.path.join(folder, "inputs.pt"))]
        torch.save(outputs, os.path.join(folder, "outputs.pt"))
    forbidden = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    print(json.dumps({"forbidden": forbidden, "loaded": loaded}))
    """
).replace("FORBIDDEN", repr(FORBIDDEN))


def _slug(config: str) -> str:
    return os.path.splitext(config)[0].replace("/", "__")


def _test_images(cfg) -> list[dict]:
    """Validation image 0 of the config's (synthetic) test set and a 3/4-wide crop of image 1,
    as the Python model's inputs. A real test set (not on a test machine) is replaced by
    synthetic scenes of its test size."""
    name = cfg.DATASETS.TEST[0]
    if name in SYNTH_SPECS:  # the validation images: the cached files are written from these
        spec = SYNTH_SPECS[name]
    else:
        size = cfg.INPUT.MIN_SIZE_TEST
        spec = dataclasses.replace(SYNTH_SPECS["synth_shapes_val"], image_size=size)
    first, second = (generate_image(spec, i)[0] for i in (0, 1))
    crop = second[:, : second.shape[1] * 3 // 4].copy()  # another size than the trace's
    return [export.prepare_input(cfg, image) for image in (first, crop)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{config: (export_info, [Python detections per image], [exported detections])} and the
    report of the fresh process."""
    root = tmp_path_factory.mktemp("export")
    cases = {}
    for config in CONFIGS:
        cfg = export.setup_cfg(config, OPTS)
        inputs = _test_images(cfg)
        model = export.build_export_model(cfg, seed=0)
        export.calibrate_batch_norm(model, inputs)
        folder = root / _slug(config)
        info = export.export_model(cfg, model, inputs[0], str(folder), config_file=config)
        expected = [export.python_detections(model, x) for x in inputs]
        torch.save(inputs, folder / "inputs.pt")
        cases[config] = (info, expected)
    names = [_slug(c) for c in CONFIGS]
    run = subprocess.run(
        [sys.executable, "-c", RUNNER, str(root), json.dumps(names)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    outputs = {c: torch.load(root / _slug(c) / "outputs.pt") for c in CONFIGS}
    return {c: (*cases[c], outputs[c]) for c in CONFIGS}, report


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_trace_has_no_branch_on_data(exported, config):
    info = exported[0][config][0]
    assert info["tracer_warnings_in_project_code"] == []
    assert info["check"]["equal"], info["check"]


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_exported_file_gives_the_python_detections(exported, config):
    info, expected, actual = exported[0][config]
    assert list(actual[0]) == info["outputs"]
    assert info["outputs"][:3] == ["pred_boxes", "scores", "pred_classes"]
    counts = []
    for want, got in zip(expected, actual):
        report = export.compare_detections(want, got, atol=1e-4)
        assert report["equal"], report
        counts.append(report["num_detections"][0])
    assert min(counts) > 0
    if "mask_rcnn" in config:  # full-image masks of the crop
        assert actual[1]["pred_masks"].shape[1:] == expected[1]["pred_masks"].shape[1:]


def test_fresh_process_loads_torch_and_op_libraries_only(exported):
    cases, report = exported
    assert report["forbidden"] == []
    for config in CONFIGS:
        uses_hnms = config.startswith(HNMS_METHODS)
        assert ("hnms" in report["loaded"][_slug(config)]) == uses_hnms, config
    counts = {c: [e["scores"].shape[0] for e in cases[c][1]] for c in CONFIGS}
    assert sum(len(set(n)) > 1 for n in counts.values()) > len(CONFIGS) // 2, counts


def test_scripted_and_traced_ops():
    """The ops have schemas: torch.jit.script compiles calls to them, and a trace records them."""
    import hnms
    from hnms import _ext

    if _ext.load() is None:
        pytest.skip("hnms._C is not built")

    @torch.jit.script
    def suppress(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor):
        keep = torch.ops.hnms.hnms(boxes, scores, groups, 0.7, 2, 1.0, 1.0, 0.0, 0.0)
        soft, decayed = torch.ops.hnms.soft_nms(boxes, scores, groups, 1, 0.5, 0.3, 0.001)
        codes = torch.ops.hnms.iou_hash(boxes, 0.7, 1.0, 1.0, 0.0, 0.0)
        return keep, soft, decayed, codes

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=g) * 30], dim=1)
    scores = torch.rand(200, generator=g)
    groups = torch.randint(0, 3, (200,), generator=g)
    keep, soft, decayed, codes = suppress(boxes, scores, groups)
    assert torch.equal(keep, hnms.batched_hnms(boxes, scores, groups, 0.7, 2))
    want_soft, want_decayed = hnms.batched_soft_nms(boxes, scores, groups)
    assert torch.equal(soft, want_soft) and torch.equal(decayed, want_decayed)
    assert torch.equal(codes, hnms.iou_hash(boxes, 0.7))

    traced = torch.jit.trace(
        lambda b, s, i: hnms.batched_hnms(b, s, i, 0.7), (boxes, scores, groups)
    )
    assert "hnms::hnms" in str(traced.graph)
    few = slice(0, 37)  # another number of boxes than the trace's
    assert torch.equal(
        traced(boxes[few], scores[few], groups[few]),
        hnms.batched_hnms(boxes[few], scores[few], groups[few], 0.7),
    )


def test_export_without_compiled_op_says_what_to_build(tmp_path):
    """Without hnms._C (blocked as in tests/hnms/test_hnms_no_extension.py), exporting a model
    that runs HNMS stops with an error naming the build command; one without HNMS exports."""
    code = BLOCK_COMPILED_OP + textwrap.dedent(
        f"""
        from d2kit import export
        try:
            export.main(["--config-file", {HNMS_CONFIG!r}, "--output", {str(tmp_path / "hnms")!r},
                         "--sample-image", {_val_image(tmp_path)!r}])
        except RuntimeError as e:
            print("ERROR", e)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    error = [line for line in run.stdout.splitlines() if line.startswith("ERROR")]
    assert error and "pip install --no-build-isolation -e ." in error[0], run.stdout
    assert "hnms._C" in error[0]
    assert not (tmp_path / "hnms" / export.MODEL_FILE).exists()


def _val_image(folder) -> str:
    """Validation image 0 of synth_shapes_val, written as a PNG in ``folder``."""
    import cv2

    path = os.path.join(str(folder), "val0.png")
    if not os.path.exists(path):
        cv2.imwrite(path, generate_image(SYNTH_SPECS["synth_shapes_val"], 0)[0])
    return path


def test_command_line(tmp_path):
    """``python -m d2kit.export`` on an image, with the op library copied; then the command of
    the runtime the export ships, in a fresh process."""
    image = _val_image(tmp_path)
    out = tmp_path / "out"
    status = export.main(
        ["--config-file", HNMS_CONFIG, "--output", str(out), "--sample-image", image,
         "--copy-library", "MODEL.WEIGHTS", "", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.015"]
    )  # fmt: skip
    assert status == 0
    info = json.loads((out / export.EXPORT_INFO).read_text())
    assert info["config"] == os.path.join(CONFIGS_ROOT, HNMS_CONFIG)
    assert info["weights"] is None and info["random_init"]["seed"] == 0
    assert info["sample"] == image and info["input"]["format"] == "BGR"
    (library,) = info["libraries"]  # HNMS pre-filter and Soft-NMS: no torchvision op
    assert library["namespace"] == "hnms" and library["copied"]
    assert sorted(library["ops"]) == ["hnms::hnms", "hnms::soft_nms"]
    files = {"model.ts", "export_info.json", "export_runtime.py", library["file"]}
    assert files <= set(os.listdir(out))
    run = subprocess.run(
        [sys.executable, str(out / "export_runtime.py"), str(out), image],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert len(lines) == info["check"]["num_detections"][0] > 0
    assert lines[0].split("\t")[0] in info["classes"]


def test_calibrate_batch_norm_sets_the_statistics_of_the_inputs():
    """BatchNorm (trainable and frozen) statistics become those of the calibration images, and
    the model's modes and momenta are restored."""
    from detectron2.layers import FrozenBatchNorm2d

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.frozen = FrozenBatchNorm2d(3)
            self.conv = torch.nn.Conv2d(3, 4, 1)
            self.bn = torch.nn.BatchNorm2d(4, momentum=0.1)

        def forward(self, batched_inputs):
            x = torch.stack([b["image"].float() for b in batched_inputs])
            return self.bn(self.conv(self.frozen(x)))

    g = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.randint(0, 255, (3, 8, 8), generator=g)} for _ in range(2)]
    model = Toy().eval()
    export.calibrate_batch_norm(model, inputs)
    x = torch.stack([b["image"].float() for b in inputs])
    mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(model.frozen.running_mean, mean)
    assert torch.allclose(model.frozen.running_var, var, rtol=1e-4)
    y = model.conv(model.frozen(x))
    assert torch.allclose(model.bn.running_mean, y.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not model.bn.training and model.bn.momentum == 0.1
    out = model(inputs)  # eval: normalised by the calibrated statistics
    assert abs(float(out.mean())) < 1e-4 and abs(float(out.var(unbiased=False)) - 1) < 1e-2
