"""The released learning-rate schedule (ReduceLROnPlateau on the validation loss, best-validation
weights kept; ref_nms.trainer) and the trainable region encoders (ref_nms.modeling), with their
config checks; one short end-to-end run through projects/RefNMS/train_net.py with both."""

import json
import os
from types import SimpleNamespace

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper

import ref_nms
from d2kit.config import add_d2kit_config
from ref_nms import (
    ResidualMLPEncoder,
    build_detector,
    build_region_encoder,
    first_stage_candidates,
    region_head,
)
from ref_nms.trainer import KeepLR, PlateauHook, PlateauSchedule, RefNMSTrainer

QUICK = "configs/RefNMS/quick_schedules"
DETECTOR = f"{QUICK}/detector_faster_rcnn_R_18_FPN_quick_synth_referring.yaml"


def _cfg():
    cfg = get_cfg()
    add_d2kit_config(cfg)
    ref_nms.add_ref_nms_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.REF_NMS.DETECTOR_CONFIG = DETECTOR
    cfg.MODEL.REF_NMS.DETECTOR_OPTS = ("MODEL.RPN.POST_NMS_TOPK_TEST", "5")
    return cfg


def _optimizer(lr=0.1):
    model = torch.nn.Linear(1, 1, bias=False)
    return model, torch.optim.SGD(model.parameters(), lr=lr)


def test_plateau_lr_drops_after_patience_and_floors():
    """patience 2: the LR halves at the 3rd evaluation in a row without improvement (PyTorch's
    rule), then again 3 later, floored at initial LR × MIN_LR_RATIO (0.1 × 0.3)."""
    model, opt = _optimizer()
    keep = KeepLR(opt)  # the per-iteration scheduler of the trainer must not undo the drops
    schedule = PlateauSchedule(opt, factor=0.5, patience=2, threshold=0.0, min_lr_ratio=0.3)
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95]
    lrs, best = [], []
    for i, loss in enumerate(losses):
        with torch.no_grad():
            model.weight.fill_(float(i))
        best.append(schedule.step(loss, model, i))
        opt.step()
        keep.step()
        lrs.append(round(opt.param_groups[0]["lr"], 10))
    assert lrs == [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.03, 0.03]
    assert best == [True, True] + [False] * 7
    assert schedule.best_loss == 0.9 and schedule.best_iteration == 1
    assert schedule.restore_best(model) and float(model.weight) == 1.0  # the weights at 0.9
    # a relative threshold: 0.89991 is not an improvement over 0.9 at threshold 1e-3
    model, opt = _optimizer()
    schedule = PlateauSchedule(opt, factor=0.5, patience=0, threshold=1e-3)
    schedule.step(0.9, model, 0)
    schedule.step(0.89991, model, 1)
    assert opt.param_groups[0]["lr"] == 0.05
    with pytest.raises(ValueError, match="validation loss is nan"):
        schedule.step(float("nan"), model, 2)


def test_plateau_hook_saves_best_and_restores_it_at_the_end():
    model, opt = _optimizer()
    values = iter([3.0, 2.0, 2.5, 2.6])  # evaluated at iterations 2, 4, 6 and 7 (the last)
    saved = []

    def loss_fn(m):
        assert m is model
        return next(values)

    schedule = PlateauSchedule(opt, factor=0.5, patience=0, threshold=0.0)
    hook = PlateauHook(schedule, loss_fn, period=2, save_fn=lambda name: saved.append(
        (name, float(model.weight))))  # fmt: skip
    hook.trainer = SimpleNamespace(model=model, max_iter=7, iter=0, storage=None)
    for it in range(7):
        hook.trainer.iter = it
        with torch.no_grad():
            model.weight.fill_(float(it))
        hook.after_step()
    assert [(i, v) for i, v, _ in hook.history] == [(2, 3.0), (4, 2.0), (6, 2.5), (7, 2.6)]
    assert [lr[0] for _, _, lr in hook.history] == [0.1, 0.1, 0.05, 0.025]
    assert saved == [("model_best", 1.0), ("model_best", 3.0)]  # weights after iterations 2, 4
    assert float(model.weight) == 3.0  # the best (iteration 4) restored after the last step
    state = hook.state_dict()
    assert state["best_loss"] == 2.0 and state["best_iteration"] == 4
    with pytest.raises(ValueError, match="PLATEAU.EVAL_PERIOD must be an int >= 1"):
        PlateauHook(schedule, loss_fn, period=0)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("LR_SCHEDULE", "cosine", "MODEL.REF_NMS.LR_SCHEDULE must be one of"),
        ("PLATEAU.FACTOR", 1.0, "MODEL.REF_NMS.PLATEAU.FACTOR must be a number in"),
        ("PLATEAU.PATIENCE", -1, "MODEL.REF_NMS.PLATEAU.PATIENCE must be an int >= 0"),
        ("PLATEAU.MIN_LR_RATIO", 2.0, "MODEL.REF_NMS.PLATEAU.MIN_LR_RATIO must be"),
        ("PLATEAU.EVAL_PERIOD", 0, "MODEL.REF_NMS.PLATEAU.EVAL_PERIOD must be an int >= 1"),
        ("SOLVER.STEPS", (10,), "set SOLVER.STEPS \\(\\) and SOLVER.WARMUP_ITERS 0"),
    ],
)
def test_schedule_config_errors_name_the_key(key, value, match):
    cfg = _cfg()
    cfg.MODEL.REF_NMS.LR_SCHEDULE = "plateau"
    node = cfg if key.startswith("SOLVER") else cfg.MODEL.REF_NMS
    *path, last = key.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    _, opt = _optimizer()
    with pytest.raises(ValueError, match=match):
        RefNMSTrainer.build_lr_scheduler(cfg, opt)


def test_released_configs_use_the_plateau_schedule():
    from d2kit.paths import resolve_config_file

    for loss, factor, patience in (("bce", 0.5, 1), ("rank", 0.6, 3)):
        cfg = _cfg()
        cfg.merge_from_file(
            resolve_config_file(f"configs/RefNMS/ref_nms_{loss}_refcoco_unc_released.yaml")
        )
        c = cfg.MODEL.REF_NMS
        assert c.LR_SCHEDULE == "plateau" and c.PLATEAU.EVAL_PERIOD == 1000
        assert (c.PLATEAU.FACTOR, c.PLATEAU.PATIENCE) == (factor, patience)
        assert c.PLATEAU.DATASET == "refcoco_unc_val" and c.PLATEAU.MIN_LR_RATIO == 0.01
        cfg = _cfg()
        cfg.merge_from_file(resolve_config_file(f"configs/RefNMS/ref_nms_{loss}_refcoco_unc.yaml"))
        assert cfg.MODEL.REF_NMS.LR_SCHEDULE == "iteration"  # the paper's configs: unchanged


def test_residual_mlp_encoder_starts_as_the_identity_and_trains():
    torch.manual_seed(0)
    enc = ResidualMLPEncoder(4, 6)
    x = torch.randn(3, 4)
    torch.testing.assert_close(enc(x), x)
    enc(x).pow(2).sum().backward()
    assert enc.fc2.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="hidden_dim must be an int >= 1"):
        ResidualMLPEncoder(4, 0)


@pytest.mark.parametrize(
    "name, pooled, match",
    [
        ("conv", False, "MODEL.REF_NMS.REGION_ENCODER.NAME must be one of"),
        ("box_head", False, "set MODEL.REF_NMS.CACHE_POOLED_FEATURES True"),
    ],
)
def test_region_encoder_config_errors_name_the_key(name, pooled, match):
    cfg = _cfg()
    cfg.MODEL.REF_NMS.REGION_ENCODER.NAME = name
    cfg.MODEL.REF_NMS.CACHE_POOLED_FEATURES = pooled
    with pytest.raises(ValueError, match=match):
        build_region_encoder(cfg)
    cfg = _cfg()
    cfg.MODEL.REF_NMS.REGION_ENCODER.NAME = "mlp"
    cfg.MODEL.REF_NMS.REGION_ENCODER.HIDDEN_DIM = -2
    with pytest.raises(ValueError, match="MODEL.REF_NMS.REGION_ENCODER.HIDDEN_DIM must be"):
        build_region_encoder(cfg)


def test_mlp_encoder_gets_the_head_learning_rate():
    from detectron2.modeling import build_model

    cfg = _cfg()
    c = cfg.MODEL.REF_NMS
    c.VISUAL_DIM, c.WORD_EMBED_DIM, c.GRU_HIDDEN_DIM, c.MLP_HIDDEN_DIM = 8, 40, 4, 6
    c.REGION_ENCODER.NAME = "mlp"
    cfg.MODEL.META_ARCHITECTURE = "RefNMS"
    cfg.SOLVER.BASE_LR = 5e-3
    model = build_model(cfg)
    assert isinstance(model.region_encoder, ResidualMLPEncoder)
    opt = RefNMSTrainer.build_optimizer(cfg, model)
    assert [g["lr"] for g in opt.param_groups] == [5e-3, 4e-4]  # the paper's two rates
    assert len(opt.param_groups[1]["params"]) == 4
    n = sum(len(g["params"]) for g in opt.param_groups)
    assert n == len([p for p in model.parameters() if p.requires_grad])
    c.REGION_ENCODER.BASE_LR = 0.0
    with pytest.raises(ValueError, match="MODEL.REF_NMS.REGION_ENCODER.BASE_LR must be"):
        RefNMSTrainer.build_optimizer(cfg, model)


def test_box_head_copy_reproduces_cached_features_from_pooled_ones():
    """The "box_head" encoder starts as the detector's box head: on the cached RoI-pooled
    features it gives the cached box-head features; it is a trainable copy."""
    cfg = _cfg()
    torch.manual_seed(0)
    model, det_cfg = build_detector(cfg)
    x = DatasetMapper(det_cfg, is_train=False)(dict(DatasetCatalog.get("synth_referring_val")[0]))
    cand = first_stage_candidates(model, [x], return_pooled=True)[0]
    assert cand["pooled"].shape == (cand["features"].shape[0], 64, 7, 7)  # quick FPN: 64 ch
    head = region_head(model, trainable_copy=True)
    with torch.no_grad():
        torch.testing.assert_close(head(cand["pooled"]), cand["features"], atol=1e-5, rtol=0)
    assert all(p.requires_grad for p in head.parameters())
    assert not any(p.requires_grad for p in model.parameters())  # the detector stays frozen
    assert head.head is not model.roi_heads.box_head


def test_train_net_plateau_schedule_with_box_head_encoder(run_train_net, tmp_path):
    """3 iterations, the val loss every 2 and at the end, the best weights saved and restored,
    e_v a trainable copy of the box head on the cached pooled features."""
    out = tmp_path / "run"
    opts = (
        "MODEL.REF_NMS.DETECTOR_WEIGHTS", "",
        "MODEL.REF_NMS.DETECTOR_OPTS", "('MODEL.RPN.POST_NMS_TOPK_TEST', '10')",
        "MODEL.REF_NMS.CACHE_DIR", str(tmp_path / "cache"),
        "MODEL.REF_NMS.MAX_TRAIN_IMAGES", "1", "MODEL.REF_NMS.MAX_TEST_IMAGES", "1",
        "MODEL.REF_NMS.CACHE_POOLED_FEATURES", "True",
        "MODEL.REF_NMS.REGION_ENCODER.NAME", "box_head",
        "MODEL.REF_NMS.LR_SCHEDULE", "plateau", "MODEL.REF_NMS.PLATEAU.EVAL_PERIOD", "2",
        "MODEL.REF_NMS.PLATEAU.MAX_IMAGES", "1",
        "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2",
        "DATASETS.TEST", "('synth_referring_val',)",
    )  # fmt: skip
    results = run_train_net("RefNMS", f"{QUICK}/ref_nms_bce_synth_referring.yaml", *opts,
                            output_dir=out)  # fmt: skip
    assert results["ref_nms"]["expressions"] > 0
    assert (out / "model_best.pth").is_file() and (out / "model_final.pth").is_file()
    with open(out / "metrics.json") as f:
        metrics = [json.loads(line) for line in f]
    val = [m["ref_nms/val_loss"] for m in metrics if "ref_nms/val_loss" in m]
    assert len(val) >= 1
    final = torch.load(out / "model_final.pth", map_location="cpu")["model"]
    best = torch.load(out / "model_best.pth", map_location="cpu")["model"]
    assert any(k.startswith("region_encoder.head.") for k in final)
    for k in final:  # model_final holds the best validation weights
        torch.testing.assert_close(final[k], best[k])
    # the first stage cached the pooled maps the box-head copy reads
    files = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "cache") for f in fs]
    cached = torch.load(next(f for f in files if f.endswith(".pth")), map_location="cpu")
    assert cached["pooled"].shape[1:] == (64, 7, 7)
