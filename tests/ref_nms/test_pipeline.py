"""Ref-NMS end to end on the synthetic referring data: the first stage's candidates (against
Detectron2's own inference), the Table 1 evaluator on ref_nms.md §7 T6, training (BCE and
ranking) and evaluation through projects/RefNMS/train_net.py, ``--eval-only``, the first-stage
cache, and the MAttNet ``matt_dets`` writer.

The detector has random weights and keeps 20 RoIs per image; runs use 2 images per split.
"""

import json
import math
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper

import ref_nms
from d2kit.config import add_d2kit_config
from ref_nms import RefNMSEvaluator, build_detector, first_stage_candidates
from ref_nms.export_proposals import main as export_main
from ref_nms.first_stage import region_feature_dim

QUICK = "configs/RefNMS/quick_schedules"
DETECTOR = f"{QUICK}/detector_faster_rcnn_R_18_FPN_quick_synth_referring.yaml"
ROIS = 20


def _cfg(**ref_nms_keys):
    cfg = get_cfg()
    add_d2kit_config(cfg)
    ref_nms.add_ref_nms_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.REF_NMS.DETECTOR_CONFIG = DETECTOR
    cfg.MODEL.REF_NMS.DETECTOR_OPTS = ("MODEL.RPN.POST_NMS_TOPK_TEST", str(ROIS))
    for k, v in ref_nms_keys.items():
        setattr(cfg.MODEL.REF_NMS, k, v)
    return cfg


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    model, det_cfg = build_detector(_cfg())
    mapper = DatasetMapper(det_cfg, is_train=False)
    inputs = [mapper(dict(d)) for d in DatasetCatalog.get("synth_referring_val")[:2]]
    return model, inputs


def test_first_stage_candidates_are_detectron2_detections_before_nms(detector):
    model, inputs = detector
    out = first_stage_candidates(model, inputs, delta=0.05)
    # Detectron2's inference without NMS and without a cap: every (RoI, class) pair above 0.05
    predictor = model.roi_heads.box_predictor
    saved = predictor.test_score_thresh, predictor.test_nms_thresh, predictor.test_topk_per_image
    predictor.test_score_thresh, predictor.test_nms_thresh = 0.05, 1.0
    predictor.test_topk_per_image = 10**6
    try:
        with torch.no_grad():
            reference = model(inputs)
    finally:
        predictor.test_score_thresh, predictor.test_nms_thresh, predictor.test_topk_per_image = (
            saved
        )
    for cand, ref, inp in zip(out, reference, inputs):
        p, f = cand["scores"].numel(), cand["features"].shape[0]
        assert cand["boxes"].shape == (p, 4) and cand["boxes"].dtype == torch.float32
        assert cand["classes"].dtype == torch.int64 and cand["feature_index"].shape == (p,)
        assert cand["features"].shape == (f, region_feature_dim(model)) == (f, 256)
        assert f <= cand["num_rois"] == ROIS and p > 0
        assert int(cand["feature_index"].max()) == f - 1
        assert bool((cand["scores"] > 0.05).all()) and cand["threshold"] == 0.05
        assert set(cand["classes"].tolist()) <= {0, 1, 2}
        b = cand["boxes"]
        assert bool((b[:, 0] >= 0).all() & (b[:, 2] <= inp["width"]).all())
        assert bool((b[:, 2] >= b[:, 0]).all() & (b[:, 3] >= b[:, 1]).all())
        # the same pairs as Detectron2's
        inst = ref["instances"]
        assert len(inst) == p

        def rows(boxes, scores, classes):  # sorted by class, score, box (many ties at 1.0)
            t = torch.cat([classes[:, None].float(), scores[:, None], boxes], dim=1)
            return torch.tensor(sorted(t.round(decimals=3).tolist()))

        ours = rows(cand["boxes"], cand["scores"], cand["classes"])
        theirs = rows(inst.pred_boxes.tensor, inst.scores, inst.pred_classes)
        torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=0)
        # each candidate carries its RoI's feature: the box predictor's input of that RoI
        with torch.no_grad():
            logits, _ = predictor(cand["features"])
        probs = logits.softmax(dim=1)[cand["feature_index"], cand["classes"]]
        torch.testing.assert_close(probs, cand["scores"], atol=1e-5, rtol=0)
        assert cand["feature_index"].unique().numel() == f


def test_first_stage_lowers_delta_until_enough_candidates(detector):
    model, inputs = detector
    every = first_stage_candidates(model, inputs[:1], delta=0.0)[0]
    want = int((every["scores"] > 0.9).sum()) + 1
    out = first_stage_candidates(model, inputs[:1], delta=0.9, min_candidates=want)[0]
    assert out["threshold"] < 0.9 and out["scores"].numel() >= want
    assert bool((out["scores"] > out["threshold"]).all())


def test_first_stage_c4_res5_features():
    """The paper's C4 first stage: v_i = res5 on the RoI's res4 crop, mean-pooled (2048-d)."""
    opts = ("MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "50", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
            "MODEL.RPN.POST_NMS_TOPK_TEST", "6", "INPUT.MIN_SIZE_TEST", "128",
            "INPUT.MAX_SIZE_TEST", "128")  # fmt: skip
    cfg = _cfg(
        DETECTOR_CONFIG="configs/RefNMS/detector_mask_rcnn_R_101_C4_coco_minus_refer.yaml",
        DETECTOR_OPTS=opts,
    )
    torch.manual_seed(0)
    model, det_cfg = build_detector(cfg)
    assert type(model.roi_heads).__name__ == "Res5ROIHeads" and region_feature_dim(model) == 2048
    d = DatasetCatalog.get("synth_referring_val")[0]
    cand = first_stage_candidates(model, [DatasetMapper(det_cfg, is_train=False)(dict(d))])[0]
    assert cand["features"].shape[1] == 2048 and cand["num_rois"] <= 6
    with torch.no_grad():
        logits, _ = model.roi_heads.box_predictor(cand["features"])
    probs = logits.softmax(dim=1)[cand["feature_index"], cand["classes"]]
    torch.testing.assert_close(probs, cand["scores"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("loss", ["bce", "rank"])
def test_model_losses_and_inference(loss):
    """RefNMS (the meta-architecture) labels candidates against [referent] + pseudo context and
    gives the loss functions' values; inference scores every candidate for every expression."""
    from detectron2.modeling import build_model

    from ref_nms import WordLookup, bce_loss, load_synth_vectors, rank_loss, relatedness_targets

    cfg = _cfg(VISUAL_DIM=8, WORD_EMBED_DIM=40, GRU_HIDDEN_DIM=4, MLP_HIDDEN_DIM=6, LOSS=loss,
               ATTENTION_DROPOUT=0.0, FUSION_DROPOUT=0.0, MAX_EXPR_LENGTH_TRAIN=20)  # fmt: skip
    cfg.MODEL.META_ARCHITECTURE = "RefNMS"
    torch.manual_seed(0)
    model = build_model(cfg)
    model.set_word_lookup(WordLookup(load_synth_vectors()))
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 6], [20, 20, 30, 30],
                          [21, 20, 30, 31], [50, 50, 60, 60]], dtype=torch.float32)  # fmt: skip
    cand = {
        "boxes": boxes,
        "scores": torch.full((6,), 0.5),
        "classes": torch.zeros(6).long(),
        "feature_index": torch.tensor([0, 1, 2, 3, 3, 4]),  # candidates 3 and 4 share a RoI
        "features": torch.randn(5, 8),
    }
    exprs = [
        {"tokens": ["the", "red", "circle"], "foreground_boxes": [[0, 0, 10, 10]]},
        {"tokens": ["the", "box", "left", "of", "the", "ring"],
         "foreground_boxes": [[20, 20, 30, 30], [0, 0, 10, 10]]},
    ]  # fmt: skip
    model.train()
    got = model([{"expression": e, "candidates": cand} for e in exprs])
    assert set(got) == {f"loss_ref_nms_{loss}"}
    got = got[f"loss_ref_nms_{loss}"]
    got.backward()
    assert model.relatedness.fc_r.weight.grad.abs().sum() > 0
    feats = cand["features"][cand["feature_index"]]
    words, mask = model.encoder([e["tokens"] for e in exprs])
    groups = torch.arange(2).repeat_interleave(6)
    logits = model.relatedness(feats.repeat(2, 1), words, mask, expr_index=groups)
    labels = [
        relatedness_targets(boxes, torch.tensor(e["foreground_boxes"], dtype=torch.float32))
        for e in exprs
    ]
    targets, rho = torch.cat([t for t, _ in labels]), torch.cat([r for _, r in labels])
    assert targets.tolist() == [1, 1, 1, 0, 0, 0] + [1, 1, 1, 1, 1, 0]  # IoU 0.82, 0.6, 0.81
    want = bce_loss(logits, targets, groups) if loss == "bce" else rank_loss(logits, rho, groups)
    assert float(got) == pytest.approx(float(want), rel=1e-5) and float(got) > 0
    model.eval()
    out = model([{"candidates": cand, "expressions": exprs}])[0]["relatedness"]
    assert out.shape == (2, 6)
    torch.testing.assert_close(out.reshape(-1), torch.sigmoid(logits.detach()), atol=1e-6, rtol=0)


def _image(boxes, scores, classes, expressions):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    n = boxes.shape[0]
    cand = {
        "boxes": boxes,
        "scores": torch.tensor(scores),
        "classes": torch.tensor(classes),
        "feature_index": torch.arange(n),
        "features": torch.zeros(n, 4),
    }
    return {"candidates": cand, "expressions": expressions}


def test_evaluator_recall_t6():
    """ref_nms.md §7 T6: referent hits at IoU 0.6, 0.5 and 0.2 -> 1/3 (0.5 is not > 0.5);
    context recall 0.5, 1.0 and (none: skipped) -> 0.75; one proposal per expression."""

    def expr(sent_id, referent, ctx, true_ctx=None, ids=(), true_ids=None):
        return {"sent_id": sent_id, "referent_box": referent, "pseudo_context_boxes": ctx,
                "pseudo_context_ids": list(ids), "true_context_boxes": true_ctx,
                "true_context_ids": true_ids}  # fmt: skip

    box = [0.0, 0.0, 10.0, 10.0]  # the only candidate of each image, class 0
    a = expr(0, [0, 0, 10, 6], [[0, 0, 10, 10], [50, 50, 60, 60]], [[0, 0, 10, 10]], [1, 2], [1])
    b = expr(1, [0, 0, 10, 5], [[0, 0, 10, 9]], [[50, 50, 60, 60]], [3], [4])
    c = expr(2, [0, 0, 10, 2], [], [], [], [])
    images = [_image([box], [0.3], [0], [e]) for e in (a, b, c)]
    evaluator = RefNMSEvaluator("t6", top_n=100, selection_thresh=0.1, distributed=False)
    evaluator.reset()
    evaluator.process(images, [{"relatedness": torch.tensor([[0.5]])}] * 3)
    res = evaluator.evaluate()
    for method in ("ref_nms", "baseline"):  # one candidate: every rule keeps it
        for setting in ("top100", "real"):
            assert res[method][f"{setting}/referent"] == pytest.approx(100 / 3)
            assert res[method][f"{setting}/context"] == pytest.approx(75.0)
            assert res[method][f"{setting}/context_true"] == pytest.approx(50.0)  # A 1, B 0
            assert res[method][f"{setting}/proposals"] == 1.0
        assert res[method]["expressions"] == 3.0
    # pseudo GT vs true context ids: precision (1/2, 0/1, -) = 0.25; recall (1, 0, -) = 0.5
    assert res["pseudo_gt"]["precision"] == pytest.approx(25.0)
    assert res["pseudo_gt"]["recall"] == pytest.approx(50.0)


def test_evaluator_ref_nms_vs_baseline_selection():
    """T3's boxes: Ref-NMS keeps b2 (fused 0.54) where the baseline keeps b1 (c = 0.9); the
    real case keeps the top-1 + s > conf; proposals are counted per expression."""
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]]
    e = {"sent_id": 7, "referent_box": [1, 0, 11, 10], "pseudo_context_boxes": [[20, 20, 30, 30]]}
    image = _image(boxes, [0.9, 0.6, 0.3, 0.5], [0, 0, 0, 1], [e])
    r = torch.tensor([[0.2, 0.9, 0.5, 0.5]])
    evaluator = RefNMSEvaluator(selection_thresh=0.2, sweep=(0.1, 0.6), distributed=False)
    evaluator.process([image], [{"relatedness": r}])
    res = evaluator.evaluate()
    # IoU(b1, referent b2) = 0.818: both hit the referent; b3 (context) only in the top-N
    assert res["ref_nms"]["real/proposals"] == 2.0  # b2, b4 (s = 0.54, 0.25 > 0.2)
    assert res["ref_nms"]["real@0.1/proposals"] == 3.0
    assert res["ref_nms"]["real@0.6/proposals"] == 1.0  # top-1 always kept
    assert res["ref_nms"]["real/context"] == 0.0 and res["ref_nms"]["real@0.1/context"] == 100
    assert res["baseline"]["real/proposals"] == 1.0  # b1 alone (c >= 0.65)
    assert res["baseline"]["top100/proposals"] == 3.0  # b1, b4, b3 (b2 suppressed)
    assert res["ref_nms"]["matched/conf"] == 0.6 and res["ref_nms"]["matched/proposals"] == 1.0
    assert "real/context_true" not in res["ref_nms"]  # unknown on real data: left out
    assert "pseudo_gt" not in res  # no true context ids: real data


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ref_nms_cache"))


def _opts(cache_dir, iters=2):
    return (
        "MODEL.REF_NMS.DETECTOR_WEIGHTS", "",  # random detector: no training needed
        "MODEL.REF_NMS.DETECTOR_OPTS", f"('MODEL.RPN.POST_NMS_TOPK_TEST', '{ROIS}')",
        "MODEL.REF_NMS.CACHE_DIR", cache_dir,
        "MODEL.REF_NMS.MAX_TRAIN_IMAGES", "2",
        "MODEL.REF_NMS.MAX_TEST_IMAGES", "2",
        "MODEL.REF_NMS.EVAL_SELECTION_THRESHS", "(0.05, 0.2)",
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.IMS_PER_BATCH", "4",
        "DATASETS.TEST", "('synth_referring_val',)",
    )  # fmt: skip


def _check_results(results):
    assert set(results) == {"ref_nms", "baseline", "pseudo_gt"}
    for method in ("ref_nms", "baseline"):
        res = results[method]
        for setting in ("top100", "real"):
            for metric in ("referent", "context", "context_true"):
                v = res[f"{setting}/{metric}"]
                assert 0.0 <= v <= 100.0 or math.isnan(v), (method, setting, metric)
            assert res[f"{setting}/proposals"] >= 1.0
        assert res["expressions"] > 0
    assert results["ref_nms"]["real/proposals"] <= results["ref_nms"]["top100/proposals"]
    assert {"matched/referent", "matched/conf", "real@0.05/referent"} <= set(results["ref_nms"])


@pytest.mark.parametrize("loss", ["bce", "rank"])
def test_train_net_trains_evaluates_and_eval_only_reproduces(
    run_train_net, tmp_path, cache_dir, loss
):
    config = f"{QUICK}/ref_nms_{loss}_synth_referring.yaml"
    out = tmp_path / "run"
    results = run_train_net("RefNMS", config, *_opts(cache_dir), output_dir=out)
    _check_results(results)
    with open(out / "final_results.json") as f:
        assert json.load(f)["ref_nms"]["real/referent"] == pytest.approx(
            results["ref_nms"]["real/referent"]
        )
    with open(out / "metrics.json") as f:
        metrics = [json.loads(line) for line in f]
    assert any("total_loss" in m and "ref_nms/candidates_per_expression" in m for m in metrics)
    cached = sorted(os.listdir(cache_dir))
    stamps = {d: os.path.getmtime(os.path.join(cache_dir, d)) for d in cached}
    again = run_train_net(
        "RefNMS", config, *_opts(cache_dir), "MODEL.WEIGHTS", out / "model_final.pth",
        output_dir=tmp_path / "eval", eval_only=True,
    )  # fmt: skip
    # deterministic: cached features, eval-mode dropout (compared as JSON: NaN == NaN)
    assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)
    # the second run read the cache: no new fingerprint folder, nothing rewritten
    assert sorted(os.listdir(cache_dir)) == cached
    assert {d: os.path.getmtime(os.path.join(cache_dir, d)) for d in cached} == stamps


def test_export_proposals_writes_matt_dets(run_train_net, tmp_path, cache_dir):
    config = f"{QUICK}/ref_nms_bce_synth_referring.yaml"
    run_train_net("RefNMS", config, *_opts(cache_dir, iters=1), output_dir=tmp_path / "run")
    weights = str(tmp_path / "run" / "model_final.pth")
    argv = ["--config-file", config, "--output-dir", str(tmp_path / "dets")]
    opts = [*_opts(cache_dir), "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "x")]
    paths = export_main(argv + opts)
    assert [os.path.basename(p) for p in paths] == [
        "matt_dets_ref_nms_bce_d2_synth_referring_unc_0.json",
        "proposals_ref_nms_bce_d2_synth_referring_unc.json",
    ]
    with open(paths[0]) as f:
        dets = json.load(f)
    val = DatasetCatalog.get("synth_referring_val")[:2]
    sents = {s["sent_id"]: (ref["ref_id"], d["image_id"])
             for d in val for ref in d["refs"] for s in ref["sentences"]}  # fmt: skip
    keys = {"det_id", "h5_id", "ref_id", "sent_id", "image_id", "box", "category_id",
            "category_name", "split"}  # fmt: skip
    assert [d["det_id"] for d in dets] == list(range(len(dets)))
    names = {1: "circle", 2: "square", 3: "triangle"}
    for d in dets:
        assert set(d) == keys and d["h5_id"] == d["det_id"] and d["split"] == "val"
        assert sents[d["sent_id"]] == (d["ref_id"], d["image_id"])
        x, y, w, h = d["box"]
        assert w >= 0 and h >= 0 and 0 <= x and x + w <= 128 + 1e-3
        assert names[d["category_id"]] == d["category_name"]
    assert {d["sent_id"] for d in dets} == set(sents)  # the top-1 is always kept
    with open(paths[1]) as f:
        proposals = json.load(f)
    assert set(proposals) == {"val"} and set(proposals["val"]) == {str(s) for s in sents}
    for props in proposals["val"].values():
        scores = [p["score"] for p in props]
        assert scores == sorted(scores, reverse=True)
        assert all(len(p["box"]) == 4 and p["cls_idx"] in (1, 2, 3) for p in props)
    # the baseline's proposals from the same cached first stage
    base = export_main(argv + ["--method", "baseline"] + opts)
    with open(base[0]) as f:
        assert {d["sent_id"] for d in json.load(f)} == set(sents)
