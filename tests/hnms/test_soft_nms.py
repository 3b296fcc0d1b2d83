"""Soft-NMS (Bodla et al.), the suppression HNMS pre-filters in Appendix C.3: hand-computed decays,
a literal slow implementation, agreement of the backends, edge cases and bad input."""

import math

import pytest
import torch

import hnms
from hnms import batched_soft_nms, soft_nms, soft_nms_with_hash_prefilter


def _slow_soft_nms(boxes, scores, method, sigma, nt, thresh):
    """Algorithm 1 of Bodla et al., literally, on Python floats (one group): output the current
    maximum M, decay the rest by f(IoU(M, b_i)), then drop what fell below ``thresh`` (the
    pruning of their released code, which the algorithm box leaves out)."""
    b = [[float(v) for v in row] for row in boxes.tolist()]
    todo = {i: float(s) for i, s in enumerate(scores.tolist()) if not math.isnan(float(s))}

    def iou(p, q):
        iw = min(p[2], q[2]) - max(p[0], q[0])
        ih = min(p[3], q[3]) - max(p[1], q[1])
        if iw <= 0 or ih <= 0:
            return 0.0
        inter = iw * ih
        area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
        return inter / (area(p) + area(q) - inter)

    out = []
    while todo:
        m = min(todo, key=lambda i: (-todo[i], i))
        out.append((m, todo.pop(m)))
        for i in list(todo):
            o = iou(b[m], b[i])
            if method == "linear":
                todo[i] *= (1 - o) if o >= nt else 1.0
            else:
                todo[i] *= math.exp(-o * o / sigma)
            if todo[i] < thresh:
                del todo[i]
    return [i for i, _ in out], [s for _, s in out]


def _three_boxes():
    # A and B overlap with IoU 50 / (100 + 100 - 50) = 1/3; C overlaps nothing.
    boxes = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], dtype=torch.float64)
    return boxes, torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)


def test_hand_computed_gaussian(backend):
    boxes, scores = _three_boxes()
    keep, new = soft_nms(boxes, scores, "gaussian", sigma=0.5, backend=backend)
    # B: 0.8 exp(-(1/3)^2 / 0.5) = 0.8 exp(-2/9) = 0.64059, now below C
    assert keep.tolist() == [0, 2, 1]
    assert new.tolist() == pytest.approx([0.9, 0.7, 0.8 * math.exp(-2 / 9)], rel=1e-12)
    assert new[2].item() == pytest.approx(0.640590, abs=1e-6)


def test_hand_computed_linear(backend):
    boxes, scores = _three_boxes()
    keep, new = soft_nms(boxes, scores, "linear", iou_threshold=0.3, backend=backend)
    assert keep.tolist() == [0, 2, 1]  # B: 0.8 (1 - 1/3) = 0.5333
    assert new.tolist() == pytest.approx([0.9, 0.7, 0.8 * 2 / 3], rel=1e-12)
    keep, new = soft_nms(boxes, scores, "linear", iou_threshold=0.5, backend=backend)
    assert keep.tolist() == [0, 1, 2]  # IoU 1/3 < N_t: B keeps 0.8
    assert new.tolist() == pytest.approx([0.9, 0.8, 0.7])


def test_decays_accumulate_and_threshold_drops(backend):
    # Four identical boxes: the k-th selected has been decayed k times by exp(-1/σ).
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]]).repeat(4, 1)
    scores = torch.tensor([0.9, 0.9, 0.5, 0.3])
    keep, new = soft_nms(boxes, scores, "gaussian", sigma=1.0, backend=backend)
    assert keep.tolist() == [0, 1, 2, 3]  # equal scores: the lower index first
    e = math.exp(-1.0)
    assert new.tolist() == pytest.approx([0.9, 0.9 * e, 0.5 * e**2, 0.3 * e**3], rel=1e-6)
    # 0.3 e^3 = 0.0149 and 0.5 e^2 = 0.068: a threshold of 0.05 drops the last
    keep, _ = soft_nms(boxes, scores, "gaussian", sigma=1.0, score_threshold=0.05, backend=backend)
    assert keep.tolist() == [0, 1, 2]
    # linear with IoU 1 decays to exactly 0: only the first survives a threshold > 0
    keep, _ = soft_nms(boxes, scores, "linear", iou_threshold=0.3, backend=backend)
    assert keep.tolist() == [0]


@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_slow_algorithm(backend, method, seed, make_crowd):
    boxes, scores = make_crowd(150, seed=seed, num_objects=6, dtype=torch.float64)
    keep, new = soft_nms(boxes, scores, method, 0.5, 0.3, 0.001, backend=backend)
    ref_keep, ref_scores = _slow_soft_nms(boxes, scores, method, 0.5, 0.3, 0.001)
    assert keep.tolist() == ref_keep
    assert new.tolist() == pytest.approx(ref_scores, rel=1e-9)
    assert len(keep) > 6  # soft: more than one box per object survives


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_matches_slow_algorithm_with_scores_below_the_threshold(backend, method, make_crowd):
    # most scores below the threshold, some negative: only the top one of those may be output
    boxes, scores = make_crowd(120, seed=4, num_objects=5, dtype=torch.float64)
    scores = scores * 0.004 - 0.001
    keep, new = soft_nms(boxes, scores, method, 0.5, 0.3, 0.002, backend=backend)
    ref_keep, ref_scores = _slow_soft_nms(boxes, scores, method, 0.5, 0.3, 0.002)
    assert keep.tolist() == ref_keep
    assert new.tolist() == pytest.approx(ref_scores, rel=1e-9)
    assert (new[1:] >= 0.002).all()
    low = scores * 0.1  # every score below 0.002: only the best box survives
    keep, new = soft_nms(boxes, low, method, 0.5, 0.3, 0.002, backend=backend)
    assert keep.tolist() == [int(torch.argmax(low))]


@pytest.mark.skipif(hnms._ext.load() is None, reason="hnms._C not built")
@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_kernel_matches_reference_batched(method, dtype, make_crowd):
    boxes, scores = make_crowd(600, seed=3, dtype=dtype)
    classes = torch.randint(0, 3, (600,), generator=torch.Generator().manual_seed(0))
    ext = batched_soft_nms(boxes, scores, classes, method, backend="ext")
    ref = batched_soft_nms(boxes, scores, classes, method, backend="torch")
    assert torch.equal(ext[0], ref[0])
    assert ext[1].dtype == dtype
    # the same float64 expressions; libm's exp and torch's may differ in the last bit
    torch.testing.assert_close(ext[1].double(), ref[1].double(), rtol=1e-12, atol=0)


def test_groups_do_not_decay_each_other(backend):
    boxes, scores = _three_boxes()
    keep, new = batched_soft_nms(
        boxes, scores, torch.tensor([0, 1, 0]), "gaussian", backend=backend
    )
    assert keep.tolist() == [0, 1, 2]  # A and B are in different classes
    assert new.tolist() == pytest.approx([0.9, 0.8, 0.7])
    keep, new = batched_soft_nms(
        boxes, scores, torch.tensor([5, 5, 0]), "gaussian", backend=backend
    )
    assert keep.tolist() == [0, 2, 1]  # same class: B is decayed as in the hand-computed test


def test_empty_one_box_and_all_below_threshold(backend):
    empty = torch.zeros((0, 4))
    keep, new = soft_nms(empty, torch.zeros(0), backend=backend)
    assert keep.shape == (0,) and keep.dtype == torch.int64 and new.shape == (0,)
    keep, new = soft_nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.5]), backend=backend)
    assert keep.tolist() == [0] and new.tolist() == [0.5]


def test_the_current_maximum_is_output_before_thresholding(backend):
    # Bodla et al.: M = argmax S is moved to D first, then the others are decayed and pruned; a
    # box below score_threshold is output only when it is the best one left (so only as the
    # first box of its group), whatever the overlaps.
    one = torch.tensor([[0.0, 0, 1, 1]])
    keep, new = soft_nms(one, torch.tensor([1e-4]), backend=backend)
    assert keep.tolist() == [0] and new.tolist() == pytest.approx([1e-4])
    apart = torch.tensor([[0.0, 0, 1, 1], [5.0, 5, 6, 6], [9.0, 9, 10, 10]])
    low = torch.tensor([2e-4, 5e-4, 0.5])
    keep, new = soft_nms(apart, low, backend=backend)
    assert keep.tolist() == [2]  # 0.5 first; then 5e-4 and 2e-4 are below 0.001: dropped
    keep, new = soft_nms(apart[:2], low[:2], backend=backend)
    assert keep.tolist() == [1]  # the best of the two is output, the other pruned after it
    # per group: every class outputs its best box; negative scores too (only as that box)
    keep, new = batched_soft_nms(apart, torch.tensor([-2.0, 5e-4, 0.5]), torch.tensor([0, 1, 2]),
                                 backend=backend)  # fmt: skip
    assert keep.tolist() == [2, 1, 0] and new.tolist() == pytest.approx([0.5, 5e-4, -2.0])
    # NaN is never a maximum
    keep, _ = soft_nms(apart[:2], torch.tensor([float("nan"), 1e-5]), backend=backend)
    assert keep.tolist() == [1]


def test_nan_negative_and_invalid_boxes(backend):
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # 0: NaN score, dropped, decays nothing
            [0.0, 0.0, 10.0, 10.0],  # 1: negative score, dropped
            [1.0, 0.0, 10.0, 10.0],  # 2: kept, undecayed (0 and 1 are gone)
            [float("nan"), 0.0, 10.0, 10.0],  # 3: invalid box: IoU 0 with everything
            [2.0, 2.0, 2.0, 8.0],  # 4: zero width: IoU 0 with everything
            [0.0, 0.0, float("inf"), 10.0],  # 5: infinite coordinate: IoU 0
        ]
    )
    scores = torch.tensor([float("nan"), -0.5, 0.4, 0.95, 0.9, 0.3])
    keep, new = soft_nms(boxes, scores, backend=backend)
    assert keep.tolist() == [3, 4, 2, 5]
    assert new.tolist() == pytest.approx([0.95, 0.9, 0.4, 0.3])


def test_non_contiguous_and_dtype(backend, make_crowd):
    boxes, scores = make_crowd(80, seed=5)
    wide = torch.zeros(80, 8)
    wide[:, ::2] = boxes
    keep, new = soft_nms(wide[:, ::2], scores[None].expand(2, -1)[1], backend=backend)
    ref_keep, ref_new = soft_nms(boxes, scores.clone(), backend=backend)
    assert torch.equal(keep, ref_keep) and torch.equal(new, ref_new)
    assert new.dtype == torch.float32


def test_prefilter_then_soft_nms():
    # Boxes 0 and 1 share an α = 0.73 cell: the pre-filter removes 1, which Soft-NMS alone keeps
    # with a decayed score.
    boxes = torch.tensor([[0.0, 0, 100, 100], [1.0, 0, 101, 100], [300.0, 0, 400, 100]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    classes = torch.zeros(3, dtype=torch.int64)
    assert hnms.iou_hash(boxes[:2], 0.73).unique(dim=0).shape[0] == 1
    keep, new = soft_nms_with_hash_prefilter(boxes, scores, classes, 0.73, 1)
    assert keep.tolist() == [0, 2]
    assert new.tolist() == pytest.approx([0.9, 0.7])
    alone, _ = batched_soft_nms(boxes, scores, classes)
    assert alone.tolist() == [0, 2, 1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="hard"), "method must be one of"),
        (dict(sigma=0.0), "sigma must be"),
        (dict(sigma=float("nan")), "sigma must be"),
        (dict(iou_threshold=1.5), r"iou_threshold \(N_t\) must be in \[0, 1\]"),
        (dict(score_threshold=-0.1), "score_threshold must be >= 0"),
        (dict(backend="gpu"), "backend must be one of"),
    ],
)
def test_bad_arguments(kwargs, message):
    boxes, scores = _three_boxes()
    with pytest.raises(ValueError, match=message):
        soft_nms(boxes, scores, **kwargs)


def test_bad_tensors():
    boxes, scores = _three_boxes()
    with pytest.raises(ValueError, match="scores must be finite"):
        soft_nms(boxes, torch.tensor([0.9, float("inf"), 0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="scores must have shape"):
        soft_nms(boxes, scores[:2])
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\]"):
        soft_nms(boxes[:, :3], scores)
    with pytest.raises(ValueError, match="boxes must be a floating-point tensor"):
        soft_nms(boxes.long(), scores)
    with pytest.raises(ValueError, match="idxs must be an integer tensor"):
        batched_soft_nms(boxes, scores, torch.zeros(3))
    with pytest.raises(ValueError, match="scores is on meta"):
        soft_nms(boxes, scores.to("meta"))


@pytest.mark.skipif(hnms._ext.load() is None, reason="hnms._C not built")
def test_ext_backend_has_no_cuda_kernel_message():
    from hnms.ops import use_compiled_kernel

    with pytest.raises(RuntimeError, match="compiled kernel for CPU only"):
        use_compiled_kernel("ext", torch.device("cuda"), cuda_kernel=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_cuda_inputs_match_cpu(make_crowd):
    boxes, scores = make_crowd(500, seed=7)
    classes = torch.randint(0, 3, (500,), generator=torch.Generator().manual_seed(1))
    cpu = batched_soft_nms(boxes, scores, classes)
    gpu = batched_soft_nms(boxes.cuda(), scores.cuda(), classes.cuda())  # pure-torch path
    assert gpu[0].device.type == "cuda"
    assert torch.equal(gpu[0].cpu(), cpu[0])
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-6, atol=0)


def test_boxes_whose_area_overflows_have_iou_zero(backend):
    # 1e30 x 1e300 = inf: the IoU of two such boxes was inf / NaN; the kernel dropped the second
    # box (NaN decay) while the reference kept it (found by the property tests). Now such a box is
    # invalid, as one with a non-finite coordinate: kept, undecayed, decays nothing.
    boxes = torch.tensor(
        [[0, 0, 1e30, 1e300], [0, 0, 1e30, 1e300], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.float64
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    keep, new = soft_nms(boxes, scores, "gaussian", backend=backend)
    assert keep.tolist() == [0, 1, 2, 3]
    assert new.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6 * math.exp(-1 / 0.5)])
