"""Train + evaluate through the shared train_net, resume after a kill, 2-process CPU launch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.engine import HookBase, default_argument_parser

from d2kit.engine import Trainer, ddp_device_ids, train_net
from d2kit.paths import REPO_ROOT, resolve_config_file
from d2kit.testing import smoke_opts

FASTER = "configs/quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml"
RETINA = "configs/quick_schedules/retinanet_R_18_FPN_quick_synth_shapes.yaml"
TINY = list(smoke_opts("synth_shapes_val_mini"))


@pytest.mark.parametrize("config", [FASTER, RETINA])
def test_train_two_iterations_and_evaluate(run_train_net, tmp_path, config):
    results = run_train_net(None, config, *TINY, output_dir=tmp_path)
    bbox = results["bbox"]
    assert set(bbox) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    for metric in ("AP", "AP50", "AP75", "APs", "APm"):
        assert 0 <= bbox[metric] <= 100, (metric, bbox[metric])  # a number: NaN fails
    assert os.path.isfile(tmp_path / "model_final.pth")
    saved = json.load(open(tmp_path / train_net.RESULTS_FILE))
    assert saved["bbox"]["AP50"] == pytest.approx(bbox["AP50"])
    assert os.path.isfile(
        tmp_path / "inference" / "synth_shapes_val_mini" / "coco_instances_results.json"
    )


def test_eval_only_reloads_the_trained_weights(run_train_net, tmp_path):
    trained = run_train_net(None, FASTER, *TINY, output_dir=tmp_path)
    evaluated = run_train_net(
        None, FASTER, "MODEL.WEIGHTS", tmp_path / "model_final.pth", *TINY,
        eval_only=True, output_dir=tmp_path / "eval",
    )  # fmt: skip
    assert 0 <= trained["bbox"]["AP"] <= 100
    assert evaluated["bbox"]["AP"] == pytest.approx(trained["bbox"]["AP"])


class _Kill(HookBase):
    """Simulates a killed run: raises after iteration ``at`` (before its checkpoint)."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise KeyboardInterrupt("simulated kill")


def _args(output_dir, *opts, resume=False):
    argv = ["--config-file", FASTER] + (["--resume"] if resume else [])
    argv += ["OUTPUT_DIR", str(output_dir), *TINY]
    argv += ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", *opts]
    return default_argument_parser().parse_args(argv)


def test_resume_continues_where_a_killed_run_stopped(tmp_path):
    class KilledTrainer(Trainer):
        def build_hooks(self):
            return super().build_hooks() + [_Kill(at=2)]

    with pytest.raises(KeyboardInterrupt):
        train_net.main(_args(tmp_path), trainer_cls=KilledTrainer)
    # periodic checkpoint after 2 iterations (index 1); the kill came before index 3
    assert os.path.isfile(tmp_path / "model_0000001.pth")
    assert not os.path.exists(tmp_path / "model_final.pth")
    checkpoint = torch.load(tmp_path / "model_0000001.pth", map_location="cpu")
    assert checkpoint["iteration"] == 1

    started = {}

    class RecordingTrainer(Trainer):
        def train(self):
            started["iter"] = self.start_iter
            started["weights"] = {
                k: v.clone() for k, v in self.model.state_dict().items() if "res5" in k
            }
            return super().train()

    results = train_net.main(_args(tmp_path, resume=True), trainer_cls=RecordingTrainer)
    assert started["iter"] == 2, "resumes after the last checkpoint, not from scratch"
    for k, v in started["weights"].items():
        torch.testing.assert_close(v, checkpoint["model"][k], msg=f"{k} not restored")
    assert os.path.isfile(tmp_path / "model_final.pth") and "bbox" in results


def test_two_gloo_workers_on_cpu(tmp_path):
    """``--num-gpus 2`` without GPUs: 2 gloo processes train in sync, then evaluate."""
    cmd = [
        sys.executable, "-m", "d2kit.engine.train_net", "--config-file", FASTER,
        "--num-gpus", "2", "--dist-url", "auto",
        "OUTPUT_DIR", str(tmp_path), *TINY,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "World size: 2" in log
    results = json.load(open(tmp_path / train_net.RESULTS_FILE))
    assert 0 <= results["bbox"]["AP50"] <= 100


def test_ddp_device_ids():
    assert ddp_device_ids(torch.nn.Linear(2, 2)) is None


def test_cuda_config_falls_back_to_cpu_without_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    args = default_argument_parser().parse_args(
        ["--config-file", FASTER, "MODEL.DEVICE", "cuda", "OUTPUT_DIR", str(tmp_path)]
    )
    assert train_net.setup(args).MODEL.DEVICE == "cpu"


def test_config_file_lookup(tmp_path):
    assert resolve_config_file(FASTER) == os.path.join(REPO_ROOT, FASTER)
    assert resolve_config_file(FASTER.removeprefix("configs/")) == os.path.join(REPO_ROOT, FASTER)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        resolve_config_file("nope.yaml")


@pytest.mark.parametrize(
    "config, expected",
    [
        ("quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml", "Trainer"),
        ("RefNMS/quick_schedules/ref_nms_bce_synth_referring.yaml", "RefNMSTrainer"),
    ],
)
def test_the_shared_launcher_takes_the_trainer_the_config_needs(monkeypatch, config, expected):
    """``python -m d2kit.engine.train_net`` / ``d2kit-train`` trains every project's configs:
    Ref-NMS's relatedness model with its own Trainer (``ref_nms.TRAINERS``), the rest with the
    shared one."""
    from d2kit.projects import project_trainer

    assert project_trainer("GeneralizedRCNN") is None
    chosen = {}
    monkeypatch.setattr(
        train_net, "main", lambda args, config_fns, trainer_cls: chosen.update(cls=trainer_cls)
    )
    train_net._baseline_main(default_argument_parser().parse_args(["--config-file", config]))
    assert chosen["cls"].__name__ == expected
