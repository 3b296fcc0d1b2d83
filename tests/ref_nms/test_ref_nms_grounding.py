"""The Table 2 listener (ref_nms.grounding): geometry, a forward pass with hand-set weights,
relation/padding behaviour, the top-1 accuracy rule (IoU exactly 0.5 is not a hit), empty
proposal lists, training on a tiny separable set, the proposal rules, the listener's config
checks, and the detector's box features at arbitrary boxes."""

import math
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper

import ref_nms
from d2kit.config import add_d2kit_config
from ref_nms import (
    ExpressionEncoder,
    Listener,
    WordLookup,
    baseline_proposals,
    box_geometry,
    evaluate_listener,
    expression_proposals,
    grounding_accuracy,
    grounding_hit,
    listener_settings,
    load_synth_vectors,
    relative_geometry,
    select_proposals,
    train_listener,
)

DETECTOR = "configs/RefNMS/quick_schedules/detector_faster_rcnn_R_18_FPN_quick_synth_referring.yaml"


def _cfg():
    cfg = get_cfg()
    add_d2kit_config(cfg)
    ref_nms.add_ref_nms_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _listener(visual_dim=2, relation=True, neighbours=0, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    encoder = ExpressionEncoder(
        embed_dim=40, hidden_size=3, lookup=WordLookup(load_synth_vectors())
    )
    return Listener(
        encoder=encoder, visual_dim=visual_dim, hidden_dim=4, embed_dim=2,
        location_neighbours=neighbours, relation=relation, dropout=dropout,
    ).eval()  # fmt: skip


def test_geometry_hand_values():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 20.0], [20.0, 10.0, 40.0, 30.0]]])
    geo = box_geometry(boxes, torch.tensor([[100.0, 50.0]]))  # H = 100, W = 50
    torch.testing.assert_close(geo[0, 1], torch.tensor([0.4, 0.1, 0.8, 0.3, 400 / 5000]))
    rel = relative_geometry(boxes)
    assert rel.shape == (1, 2, 2, 5)
    # box 1 seen from box 0 (centre (5, 10), w 10, h 20): x1 (20-5)/10, y1 (10-10)/20, ...
    torch.testing.assert_close(rel[0, 0, 1], torch.tensor([1.5, 0.0, 3.5, 1.0, 400 / 200]))
    torch.testing.assert_close(rel[0, 1, 1], torch.tensor([-0.5, -0.5, 0.5, 0.5, 1.0]))


def test_listener_forward_hand_set_subject_module():
    """Module weights forced to the subject module, its MLP = ReLU(identity), a fixed phrase
    u = (1, 0): logit_i = 10 · cos(ReLU(v_i), u), whatever the words."""
    lis = _listener(relation=True)
    with torch.no_grad():
        lis.module_weights.weight.zero_()
        lis.module_weights.bias.copy_(torch.tensor([0.0, -1e4, -1e4]))
        lis.phrase[0].weight.zero_()
        lis.phrase[0].bias.copy_(torch.tensor([1.0, 0.0]))
        lis.subject[0].weight.zero_()
        lis.subject[0].weight[:2, :2] = torch.eye(2)
        lis.subject[0].bias.zero_()
        lis.subject[2].weight.zero_()
        lis.subject[2].weight[:, :2] = torch.eye(2)
        lis.subject[2].bias.zero_()
    feats = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [5.0, 5.0]]])
    boxes = torch.tensor([[[0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30], [0, 0, 0, 0]]]).float()
    valid = torch.tensor([[True, True, True, False]])
    classes = torch.zeros(1, 4, dtype=torch.int64)
    logits = lis(
        feats, boxes, classes, valid, torch.tensor([[64.0, 64.0]]), [["the", "red", "one"]]
    )
    assert logits.shape == (1, 4) and logits[0, 3] == -math.inf  # padding
    torch.testing.assert_close(logits[0, :3], torch.tensor([10.0, 10 / math.sqrt(2), 0.0]))
    # another sentence: the same scores (the phrase is fixed, the module weights too)
    again = lis(feats, boxes, classes, valid, torch.tensor([[64.0, 64.0]]), [["the", "box"]])
    torch.testing.assert_close(again, logits)


def test_listener_relation_context_and_padding():
    torch.manual_seed(1)
    feats = torch.randn(1, 3, 2)
    boxes = torch.tensor([[[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]]]).float()
    classes = torch.tensor([[0, 1, 1]])
    sizes = torch.tensor([[64.0, 64.0]])
    tokens = [["the", "circle", "left", "of", "the", "box"]]
    full = torch.ones(1, 3, dtype=torch.bool)
    drop_last = torch.tensor([[True, True, False]])
    # relation module: proposal 0's score depends on the other proposals of the list (alone,
    # it has no context: relation score 0)
    lis = _listener(relation=True)
    two, one = torch.ones(1, 2, dtype=torch.bool), torch.tensor([[True, False]])
    a = lis(feats[:, :2], boxes[:, :2], classes[:, :2], two, sizes, tokens)
    b = lis(feats[:, :2], boxes[:, :2], classes[:, :2], one, sizes, tokens)
    assert abs(float(a[0, 0] - b[0, 0])) > 1e-4 and b[0, 1] == -math.inf
    # without relation and location neighbours, each score is the proposal's alone
    lis = _listener(relation=False)
    a = lis(feats, boxes, classes, full, sizes, tokens)
    b = lis(feats, boxes, classes, drop_last, sizes, tokens)
    torch.testing.assert_close(a[0, :2], b[0, :2])
    # padding never changes the real proposals' logits; permuting proposals permutes them
    lis = _listener(relation=True, neighbours=2)
    pad = lambda x, v: torch.cat([x, torch.full_like(x[:, :1], v)], dim=1)  # noqa: E731
    a = lis(feats, boxes, classes, full, sizes, tokens)
    p = lis(pad(feats, 9.0), pad(boxes, 0.0), pad(classes, 1), pad(full, False), sizes, tokens)
    torch.testing.assert_close(p[0, :3], a[0])
    perm = torch.tensor([2, 0, 1])
    q = lis(feats[:, perm], boxes[:, perm], classes[:, perm], full, sizes, tokens)
    torch.testing.assert_close(q[0], a[0, perm])


def test_listener_empty_lists_and_bad_input():
    lis = _listener()
    empty = lis(torch.zeros(2, 0, 2), torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64),
                torch.zeros(2, 0, dtype=torch.bool), torch.ones(2, 2), [["a"], []])  # fmt: skip
    assert empty.shape == (2, 0)
    with pytest.raises(ValueError, match="region_features must be"):
        lis(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.int64),
            torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2), [["a"]])  # fmt: skip
    with pytest.raises(ValueError, match="valid must be"):
        lis(torch.zeros(1, 2, 2), torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.int64),
            torch.ones(1, 2), torch.ones(1, 2), [["a"]])  # fmt: skip
    with pytest.raises(ValueError, match="NaN"):
        lis(torch.full((1, 1, 2), math.nan), torch.zeros(1, 1, 4),
            torch.zeros(1, 1, dtype=torch.int64), torch.ones(1, 1, dtype=torch.bool),
            torch.ones(1, 2), [["a"]])  # fmt: skip


def test_accuracy_rule_iou_exactly_half_is_a_miss():
    referent = [0.0, 0.0, 10.0, 10.0]
    assert grounding_hit([1.0, 0.0, 11.0, 10.0], referent)  # IoU 90/110 = 0.818
    assert not grounding_hit([0.0, 0.0, 10.0, 5.0], referent)  # IoU exactly 0.5
    assert not grounding_hit(None, referent)  # no proposal, no prediction
    preds = [[1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 5.0], None]
    assert grounding_accuracy(preds, [referent] * 3) == pytest.approx(100 / 3)
    assert math.isnan(grounding_accuracy([], []))
    with pytest.raises(ValueError, match="one of each per expression"):
        grounding_accuracy(preds, [referent])
    with pytest.raises(ValueError, match="negative width"):
        grounding_hit([5.0, 0.0, 1.0, 10.0], referent)


def _image(features, boxes, classes, referent_ids, tokens, ann_ids=None, height=64, width=64):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    n = boxes.shape[0]
    ann_ids = list(range(n)) if ann_ids is None else ann_ids
    exprs = [{"ann_id": a, "tokens": t, "referent_box": boxes[ann_ids.index(a)].tolist(),
              "sent_id": k} for k, (a, t) in enumerate(zip(referent_ids, tokens))]  # fmt: skip
    feats = torch.tensor(features, dtype=torch.float32)
    cand = {"boxes": boxes, "scores": torch.full((n,), 0.9), "classes": torch.tensor(classes)}
    return {
        "image_id": 0, "height": height, "width": width, "expressions": exprs,
        "gt_boxes": boxes, "gt_classes": torch.tensor(classes), "gt_ann_ids": ann_ids,
        "gt_features": feats, "candidates": cand, "candidate_features": feats,
    }  # fmt: skip


def test_train_listener_learns_a_separable_toy_and_is_deterministic():
    """Circles have feature (1, 0), squares (0, 1): 'the circle' / 'the box' must pick them."""
    images = [
        _image([[1, 0], [0, 1]], [[0, 0, 10, 10], [30, 30, 40, 40]], [0, 1], [0, 1],
               [["the", "circle"], ["the", "box"]]),
        _image([[0, 1], [1, 0], [0, 1]], [[0, 0, 10, 10], [30, 0, 40, 10], [0, 30, 9, 40]],
               [1, 0, 1], [1, 0], [["the", "ring"], ["the", "square"]]),
    ]  # fmt: skip
    runs = []
    for _ in range(2):
        lis = _listener(dropout=0.0, seed=3)
        runs.append(train_listener(lis, images, epochs=60, batch_size=2, lr=0.05, seed=7))
    assert runs[0] == runs[1]  # same seeds, same losses
    assert runs[0][-1] < 0.1 < runs[0][0]
    res = evaluate_listener(lis, images)  # ground-truth boxes as candidates
    assert res == {"accuracy": 100.0, "referent_recall": 100.0, "proposals": 2.5,
                   "expressions": 4.0}  # fmt: skip
    # with proposal lists: an empty list is a defined miss; a list without the referent too
    lists = {(0, 0): [0, 1], (0, 1): [], (1, 0): [2], (1, 1): [0, 1, 2]}
    res = evaluate_listener(lis, images, lambda i, e: torch.tensor(lists[(i, e)]))
    assert res["expressions"] == 4.0 and res["proposals"] == pytest.approx(6 / 4)
    assert res["referent_recall"] == 50.0 and res["accuracy"] == 50.0


def test_expression_proposals_are_the_selection_rules():
    """ref_nms.md §7 T3's candidates: the baseline keeps b1 (c >= 0.65), Ref-NMS b2 and b4."""
    cand = {
        "boxes": torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]],
                              dtype=torch.float32),
        "scores": torch.tensor([0.9, 0.6, 0.3, 0.5]),
        "classes": torch.tensor([0, 0, 0, 1]),
    }  # fmt: skip
    r = torch.tensor([0.2, 0.9, 0.5, 0.5])
    assert expression_proposals(cand).tolist() == [0]
    assert expression_proposals(cand, r, selection_thresh=0.2).tolist() == [1, 3]
    args = (cand["boxes"], cand["classes"], cand["scores"])
    assert torch.equal(expression_proposals(cand), baseline_proposals(*args))
    assert torch.equal(
        expression_proposals(cand, r, selection_thresh=0.1),
        select_proposals(*args, r, score_thresh=0.1),
    )


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("EPOCHS", 0, "LISTENER.EPOCHS must be an int >= 1"),
        ("HIDDEN_DIM", -1, "LISTENER.HIDDEN_DIM must be an int >= 1"),
        ("LOCATION_NEIGHBOURS", 1.5, "LISTENER.LOCATION_NEIGHBOURS must be an int >= 0"),
        ("DROPOUT", 1.0, "LISTENER.DROPOUT must be < 1"),
        ("BASE_LR", 0.0, "LISTENER.BASE_LR must be > 0"),
        ("HIT_IOU", float("nan"), "LISTENER.HIT_IOU must be finite"),
        ("RELATION", "yes", "LISTENER.RELATION must be True or False"),
        ("TRAIN_DATASETS", "synth_referring_train", "LISTENER.TRAIN_DATASETS must be a tuple"),
    ],
)
def test_listener_config_errors_name_the_key(key, value, match):
    cfg = _cfg()
    setattr(cfg.MODEL.REF_NMS.LISTENER, key, value)
    with pytest.raises(ValueError, match=match):
        listener_settings(cfg)


def test_listener_from_config_defaults():
    cfg = _cfg()
    cfg.MODEL.REF_NMS.VISUAL_DIM = 8
    cfg.MODEL.REF_NMS.WORD_EMBED_DIM = 40
    s = listener_settings(cfg)
    assert s["hit_iou"] == 0.5 and s["relation"] is True and s["location_neighbours"] == 5
    lis = Listener(cfg, lookup=WordLookup(load_synth_vectors()))
    assert lis.visual_dim == 8 and lis.encoder.hidden_size == s["gru_hidden_dim"]
    assert lis.modules_used == ("subject", "location", "relation")


def test_box_features_at_rois_equal_the_detector_box_head():
    """e_v at arbitrary boxes (ground truth, candidates): at the RPN's own proposals it is the
    box head's input of those RoIs, and boxes given in an original image twice the input size
    are scaled down to it."""
    from ref_nms import box_features, build_detector

    cfg = _cfg()
    cfg.MODEL.REF_NMS.DETECTOR_CONFIG = DETECTOR
    cfg.MODEL.REF_NMS.DETECTOR_OPTS = ("MODEL.RPN.POST_NMS_TOPK_TEST", "5")
    torch.manual_seed(0)
    model, det_cfg = build_detector(cfg)
    x = DatasetMapper(det_cfg, is_train=False)(dict(DatasetCatalog.get("synth_referring_val")[0]))
    with torch.no_grad():
        images = model.preprocess_image([x])
        feats = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, feats, None)
        rois = proposals[0].proposal_boxes
        heads = model.roi_heads
        want = model.roi_heads.box_head(heads.box_pooler([feats[f] for f in heads.box_in_features],
                                                         [rois]))  # fmt: skip
    x = dict(x, height=images.image_sizes[0][0], width=images.image_sizes[0][1])
    got = box_features(model, [x], [rois.tensor])[0]
    torch.testing.assert_close(got, want.flatten(1))
    big = dict(x, height=2 * x["height"], width=2 * x["width"])
    torch.testing.assert_close(box_features(model, [big], [2 * rois.tensor])[0], got)
    assert box_features(model, [x], [torch.zeros(0, 4)])[0].shape == (0, 256)
    with pytest.raises(ValueError, match="negative width"):
        box_features(model, [x], [torch.tensor([[5.0, 0.0, 1.0, 4.0]])])


def test_build_listener_images_caches_box_features(tmp_path):
    """Ground-truth regions and candidates with e_v pooled at their boxes, cached once next to
    the first-stage cache; a ground-truth-only entry gains the candidates when asked."""
    from ref_nms import build_listener_images, listener_examples

    cfg = _cfg()
    cfg.MODEL.REF_NMS.DETECTOR_CONFIG = DETECTOR
    cfg.MODEL.REF_NMS.DETECTOR_OPTS = ("MODEL.RPN.POST_NMS_TOPK_TEST", "10")
    cfg.MODEL.REF_NMS.CACHE_DIR = str(tmp_path)
    cfg.MODEL.REF_NMS.VISUAL_DIM = 256
    cfg.DATASETS.TRAIN = ("synth_referring_train",)
    # one fixed (random) detector for the first stage and the box features
    from ref_nms import build_detector

    torch.manual_seed(0)
    weights = str(tmp_path / "detector.pth")
    torch.save({"model": build_detector(cfg)[0].state_dict()}, weights)
    cfg.MODEL.REF_NMS.DETECTOR_WEIGHTS = weights
    cfg.MODEL.REF_NMS.CACHE_DIR = str(tmp_path / "cache")
    tmp_path = tmp_path / "cache"
    gt_only = build_listener_images(cfg, "synth_referring_val", with_candidates=False,
                                    max_images=1)  # fmt: skip
    (image,) = gt_only
    d = DatasetCatalog.get("synth_referring_val")[0]
    assert "candidates" not in image and image["candidates_file"] is None
    assert image["gt_features"].shape == (len(d["annotations"]), 256)
    assert image["gt_ann_ids"] == [a["id"] for a in d["annotations"]]
    examples = listener_examples(gt_only)
    assert len(examples) == len(image["expressions"])
    for _, e, k in examples:
        want = torch.tensor(image["expressions"][e]["referent_box"])
        torch.testing.assert_close(image["gt_boxes"][k], want)
    (full,) = build_listener_images(cfg, "synth_referring_val", max_images=1)
    p = full["candidates"]["boxes"].shape[0]
    assert full["candidate_features"].shape == (p, 256) and p > 0
    # Pooled with the candidates, the ground-truth boxes go through the box head in a larger
    # batch: the same features up to float32 rounding of the matrix products, not bit for bit.
    torch.testing.assert_close(full["gt_features"], image["gt_features"], rtol=1e-4, atol=5e-4)
    folders = sorted(os.listdir(tmp_path))
    stamps = {f: os.path.getmtime(os.path.join(tmp_path, f)) for f in folders}
    (again,) = build_listener_images(cfg, "synth_referring_val", max_images=1)
    torch.testing.assert_close(again["candidate_features"], full["candidate_features"])
    assert sorted(os.listdir(tmp_path)) == folders and any(f.endswith("_boxes") for f in folders)
    assert {f: os.path.getmtime(os.path.join(tmp_path, f)) for f in folders} == stamps
