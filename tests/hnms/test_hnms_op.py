"""IoUHash (Alg. 1), HNMS (Alg. 2/3) and the lower bound (Alg. 4) against the paper."""

import math

import pytest
import torch
from torchvision.ops import box_iou, nms

import hnms
from hnms import INVALID_CODE, _ext
from hnms.reference import hash_params

HAS_EXT = _ext.load() is not None
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="hnms._C is not built")


def xyxy(w, h, x, y):
    return [x - w / 2, y - h / 2, x + w / 2, y + h / 2]


# ---------------------------------------------------------------- IoUHash, Eqs. 1-9


def test_iou_hash_by_hand(backend):
    # α = 0.5, W0 = H0 = 1: w = 8 -> i = round((log 1 - log 8) / log 0.5) = 3, W_3 = 8,
    # δ = 8 * 0.5 / 1.5 = 8/3, x = 10 -> m = round(3.75) = 4; h = 2 -> j = 1, δ = 2/3,
    # y = 1.2 -> n = round(1.8) = 2.
    boxes = torch.tensor([xyxy(8.0, 2.0, 10.0, 1.2)], dtype=torch.float64)
    assert hnms.iou_hash(boxes, 0.5, backend=backend).tolist() == [[3, 1, 4, 2]]
    # b_x = b_y = 0.5 shift the offset cells by half a cell: m = round(3.25) = 3, n = round(1.3) = 1
    codes = hnms.iou_hash(boxes, 0.5, bx=0.5, by=0.5, backend=backend)
    assert codes.tolist() == [[3, 1, 3, 1]]
    # W0 = 2: i = round(log(8 / 2) / log 2) = 2, W_2 = 8 (same δ); H0 = 4: j = round(-1) = -1
    codes = hnms.iou_hash(boxes, 0.5, w0=2.0, h0=4.0, backend=backend)
    assert codes.tolist() == [[2, -1, 4, 2]]
    # α = 0.7, a 10 x 10 box at (20, 30): i = round(log 10 / log(1/0.7)) = round(6.456) = 6,
    # W_6 = 0.7^-6 = 8.4999, δ = W_6 * 0.3 / 1.7 = 1.49997, m = round(13.334) = 13,
    # n = round(20.0004) = 20
    boxes = torch.tensor([xyxy(10.0, 10.0, 20.0, 30.0)])
    assert hnms.iou_hash(boxes, 0.7, backend=backend).tolist() == [[6, 6, 13, 20]]


def test_iou_hash_matches_the_equations(make_crowd, backend):
    boxes, _ = make_crowd(300, seed=1, dtype=torch.float64)
    alpha, w0, h0, bx, by = 0.65, 1.5, 0.8, 0.25, 0.75
    codes = hnms.iou_hash(boxes, alpha, w0, h0, bx, by, backend=backend)
    for (x1, y1, x2, y2), code in zip(boxes.tolist(), codes.tolist()):
        w, h, x, y = x2 - x1, y2 - y1, (x1 + x2) / 2, (y1 + y2) / 2
        i = math.floor((math.log(w0) - math.log(w)) / math.log(alpha) + 0.5)  # Eq. (2)
        j = math.floor((math.log(h0) - math.log(h)) / math.log(alpha) + 0.5)  # Eq. (3)
        d_i = w0 / alpha**i * (1 - alpha) / (1 + alpha)  # Eqs. (1), (4)
        d_j = h0 / alpha**j * (1 - alpha) / (1 + alpha)  # Eqs. (8), (9)
        m = math.floor(x / d_i - bx + 0.5)  # Eq. (6)
        n = math.floor(y / d_j - by + 0.5)  # Eq. (7)
        assert code == [i, j, m, n]


def test_paper_three_box_example(paper_boxes, backend):
    """§3.3: α = 0.73 -> bound 0.5015; HNMS keeps A, B; NMS@0.5015 keeps A, C.

    The paper prints IoU(A, B) = 0.7100 and IoU(A, C) = 0.4934. Those do not follow from the
    boxes it gives (width, height, x, y) = (100, 100, 54.1 | 79.1 | 96.1, 50), nor from any
    other order of the four numbers as (cx, cy, w, h), (x, y, w, h) or (x1, y1, x2, y2), with or
    without the +1 pixel convention: the IoUs are (100 - 25) / (100 + 25) = 0.6 and
    (100 - 42) / (100 + 42) = 0.4085. The paper's conclusions hold with either pair: B is above
    the threshold (suppressed by A under NMS), C below it.
    """
    boxes, scores = paper_boxes
    iou = box_iou(boxes, boxes)
    assert iou[0, 1].item() == pytest.approx(75 / 125, abs=1e-4)
    assert iou[0, 2].item() == pytest.approx(58 / 142, abs=1e-4)
    bound = hnms.iou_lower_bound(0.73)
    assert bound == pytest.approx(0.5015, abs=1e-4)
    codes = hnms.iou_hash(boxes, 0.73, backend=backend)
    assert codes[1].tolist() == codes[2].tolist() != codes[0].tolist()  # B and C share a cell
    assert hnms.hnms(boxes, scores, 0.73, backend=backend).tolist() == [0, 1]
    assert nms(boxes, scores, bound).tolist() == [0, 2]


# ---------------------------------------------------------------- lower bound, Alg. 4


def test_iou_lower_bound_paper_values():
    assert hnms.iou_lower_bound(0.73) == pytest.approx(0.5015, abs=1e-4)  # §3.3 / §4.3
    assert hnms.iou_lower_bound(0.3) == pytest.approx(1.4e-4, rel=0.03)  # §3.1
    assert hnms.iou_lower_bound(0.29) == 0.0  # Eq. (14) fails below about 0.2956
    assert hnms.iou_lower_bound(0.7) == pytest.approx(0.452, abs=1e-3)
    alphas = [a / 100 for a in range(1, 100)]
    bounds = [hnms.iou_lower_bound(a) for a in alphas]
    assert all(b2 >= b1 for b1, b2 in zip(bounds, bounds[1:]))  # non-decreasing, Fig. 3
    assert all(0.0 <= b < 1.0 for b in bounds)


def test_alpha_for_iou():
    alpha = hnms.alpha_for_iou(0.5)
    assert 0.72 < alpha < 0.73
    assert hnms.iou_lower_bound(alpha) >= 0.5 > hnms.iou_lower_bound(alpha - 1e-4)
    with pytest.raises(ValueError, match="iou"):
        hnms.alpha_for_iou(1.0)
    with pytest.raises(ValueError, match="alpha"):
        hnms.iou_lower_bound(1.0)


@pytest.mark.parametrize("alpha", [0.4, 0.5, 0.7, 0.73, 0.85])
def test_boxes_in_one_cell_have_iou_above_the_bound(alpha):
    g = torch.Generator().manual_seed(int(alpha * 100))
    n = 1500
    # many near-identical boxes of many sizes, so that most cells hold several boxes
    base = torch.tensor([[50.0, 60.0, 30.0, 20.0]]).repeat(n, 1)
    base[:, 2:] *= torch.exp(torch.rand(n, 2, generator=g) * 2.0)
    base[:, :2] += torch.rand(n, 2, generator=g) * 20.0
    boxes = torch.cat([base[:, :2] - base[:, 2:] / 2, base[:, :2] + base[:, 2:] / 2], 1).double()
    codes = hnms.iou_hash(boxes, alpha)
    same = (codes[:, None, :] == codes[None, :, :]).all(-1)
    same.fill_diagonal_(False)
    assert same.sum() > 100  # the test exercises shared cells
    iou = box_iou(boxes, boxes)[same]
    assert iou.min().item() >= hnms.iou_lower_bound(alpha) - 1e-9


# ---------------------------------------------------------------- Alg. 2 and Alg. 3


def alg2(codes, scores):
    """Alg. 2 literally, with ties to the lower index; codes [N, k] list, scores list."""
    code2idx = {}
    for i, (c, s) in enumerate(zip(codes, scores)):
        c = tuple(c)
        if c in code2idx:
            if scores[code2idx[c]] < s:
                code2idx[c] = i
        else:
            code2idx[c] = i
    return sorted(code2idx.values(), key=lambda i: (-scores[i], i))


def test_hnms_is_alg2(make_crowd, backend):
    boxes, scores = make_crowd(2000, seed=3)
    scores = (scores * 20).round() / 20  # many equal scores: ties go to the lower index
    keep = hnms.hnms(boxes, scores, 0.6, backend=backend)
    expected = alg2(hnms.iou_hash(boxes, 0.6).tolist(), scores.tolist())
    assert keep.tolist() == expected
    assert keep.dtype == torch.int64
    assert len(keep) < len(boxes) / 2


def test_batched_hnms_keys_on_the_group(make_crowd, backend):
    boxes, scores = make_crowd(1500, seed=4)
    idxs = torch.randint(0, 4, (1500,), generator=torch.Generator().manual_seed(0))
    keep = hnms.batched_hnms(boxes, scores, idxs, 0.7, backend=backend)
    codes = torch.cat([hnms.iou_hash(boxes, 0.7), idxs[:, None]], 1)
    assert keep.tolist() == alg2(codes.tolist(), scores.tolist())
    # groups far apart in value (a coordinate-offset trick would overflow the codes)
    big = idxs * 10**15 - 7
    assert torch.equal(hnms.batched_hnms(boxes, scores, big, 0.7, backend=backend), keep)
    # one group = plain hnms
    same = torch.zeros_like(idxs)
    assert torch.equal(
        hnms.batched_hnms(boxes, scores, same, 0.7, backend=backend),
        hnms.hnms(boxes, scores, 0.7, backend=backend),
    )


@pytest.mark.parametrize("num_hashes", [2, 3, 4])
def test_cascade_of_eq16(make_crowd, backend, num_hashes):
    boxes, scores = make_crowd(1500, seed=5)
    alpha = 0.7
    keep = torch.arange(len(boxes))
    for k in range(num_hashes):  # Alg. 3: HNMS[k] on the survivors of HNMS[k-1]
        w0 = alpha ** (-k / num_hashes)  # Eq. (16): log W0^(k) = -log(α) k / K
        b = k / num_hashes  # Eq. (16): b^(k) = k / K
        cur = hnms.hnms(boxes[keep], scores[keep], alpha, w0=w0, h0=w0, bx=b, by=b)
        keep = keep[cur]
    expected = keep[torch.sort(scores[keep], descending=True, stable=True).indices]
    got = hnms.hnms(boxes, scores, alpha, num_hashes, backend=backend)
    assert got.tolist() == expected.tolist()
    one = set(hnms.hnms(boxes, scores, alpha, backend=backend).tolist())
    assert set(got.tolist()) < one  # every extra hash only removes boxes
    p = hash_params(alpha, 1.0, 1.0, 0.0, 0.0, 1, num_hashes)
    assert p["w0"] == pytest.approx(alpha ** (-1 / num_hashes))
    assert p["bx"] == pytest.approx(1 / num_hashes)


# ---------------------------------------------------------------- backends agree


@needs_ext
@pytest.mark.parametrize("num_hashes", [1, 2, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cpu_kernel_matches_reference(make_crowd, num_hashes, seed):
    boxes, scores = make_crowd(3000, seed=seed)
    boxes[:20, 2] = boxes[:20, 0]  # zero width
    boxes[20:30, 3] -= 200.0  # negative height
    boxes[30, 1] = float("inf")
    boxes[31, 0] = float("nan")
    scores[40:50] = float("nan")
    scores[50:60] = -torch.rand(10) * 10  # logits
    scores[60] = float("inf")
    scores[61] = -float("inf")
    scores[62:70] = scores[70]  # ties
    idxs = torch.randint(0, 3, (3000,), generator=torch.Generator().manual_seed(seed))
    for alpha in (0.5, 0.7, 0.9):
        for fn, args in ((hnms.hnms, ()), (hnms.batched_hnms, (idxs,))):
            ref = fn(boxes, scores, *args, alpha, num_hashes, backend="torch")
            ext = fn(boxes, scores, *args, alpha, num_hashes, backend="ext")
            assert torch.equal(ref, ext), (fn.__name__, alpha)
        assert torch.equal(
            hnms.iou_hash(boxes, alpha, backend="torch"), hnms.iou_hash(boxes, alpha, backend="ext")
        )


@needs_ext
def test_cpu_kernel_sorted_input_fast_path(make_crowd):
    boxes, scores = make_crowd(5000, seed=7)
    order = torch.sort(scores, descending=True).indices
    boxes, scores = boxes[order], scores[order]
    ext = hnms.hnms(boxes, scores, 0.7, backend="ext")
    assert torch.equal(ext, hnms.hnms(boxes, scores, 0.7, backend="torch"))
    assert torch.equal(ext, torch.sort(ext).values)  # sorted input -> kept indices ascending


# ---------------------------------------------------------------- edge cases


def test_empty_and_single(backend):
    empty = hnms.hnms(torch.zeros(0, 4), torch.zeros(0), 0.7, backend=backend)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    assert hnms.iou_hash(torch.zeros(0, 4), 0.7, backend=backend).shape == (0, 4)
    idxs = torch.zeros(0, dtype=torch.int64)
    assert hnms.batched_hnms(torch.zeros(0, 4), torch.zeros(0), idxs, 0.7).shape == (0,)
    one = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert hnms.hnms(one, torch.tensor([0.3]), 0.7, 3, backend=backend).tolist() == [0]


def test_identical_boxes_keep_the_best_then_lowest_index(backend):
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0]]).repeat(6, 1)
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.2, 0.9])
    assert hnms.hnms(boxes, scores, 0.7, backend=backend).tolist() == [1]
    # -0.0 and +0.0 are equal scores: the lower index wins
    zeros = torch.tensor([0.0, -0.0, 0.0, -0.0, 0.0, -0.0])
    assert hnms.hnms(boxes, -zeros, 0.7, backend=backend).tolist() == [0]


def test_nan_scores_are_never_kept(backend):
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0]]).repeat(3, 1)
    boxes = torch.cat([boxes, torch.tensor([[500.0, 500.0, 520.0, 530.0]])])
    scores = torch.tensor([float("nan"), 0.2, 0.1, float("nan")])
    assert hnms.hnms(boxes, scores, 0.7, backend=backend).tolist() == [1]
    all_nan = torch.full((4,), float("nan"))
    assert hnms.hnms(boxes, all_nan, 0.7, backend=backend).tolist() == []


def test_infinite_and_negative_scores(backend):
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0]]).repeat(3, 1)
    boxes = torch.cat([boxes, torch.tensor([[500.0, 500.0, 520.0, 530.0]])])
    scores = torch.tensor([-3.0, float("inf"), -float("inf"), -float("inf")])
    assert hnms.hnms(boxes, scores, 0.7, backend=backend).tolist() == [1, 3]
    logits = torch.tensor([-5.0, -1.0, -7.0, -2.0])
    assert hnms.hnms(boxes, logits, 0.7, backend=backend).tolist() == [1, 3]


def test_unhashable_boxes_pass_through(backend):
    inf, nan = float("inf"), float("nan")
    boxes = torch.tensor(
        [
            [10.0, 10.0, 50.0, 40.0],  # a normal box ...
            [10.0, 10.0, 50.0, 40.0],  # ... and its duplicate (suppressed)
            [10.0, 10.0, 10.0, 40.0],  # zero width
            [10.0, 10.0, 10.0, 40.0],  # the same zero-width box again
            [50.0, 10.0, 10.0, 40.0],  # negative width
            [10.0, 40.0, 50.0, 10.0],  # negative height
            [10.0, 10.0, inf, 40.0],  # infinite coordinate
            [nan, 10.0, 50.0, 40.0],  # NaN coordinate
            [1e30, 1e30, 1e30 + 1e20, 1e30 + 1e20],  # |x / δ| ~ 1e11: hashable
        ],
        dtype=torch.float64,
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    codes = hnms.iou_hash(boxes, 0.7, backend=backend)
    assert (codes[2:8] == INVALID_CODE).all()
    assert (codes[[0, 1, 8]] != INVALID_CODE).all()
    # unhashable boxes are their own cells: kept, suppress nothing (as NMS, IoU 0 or NaN)
    assert hnms.hnms(boxes, scores, 0.7, backend=backend).tolist() == [0, 2, 3, 4, 5, 6, 7, 8]


def test_huge_coordinates_do_not_overflow(backend):
    # a 1-pixel box at x = 1e30: x / δ ~ 1e31 does not fit in 2^62 -> unhashable, kept
    boxes = torch.tensor([[1e30, 0.0, 1e30 + 1, 1.0]] * 2, dtype=torch.float64)
    boxes[1, 2] = 1e30 + 2.0**80  # width 2^80: x / δ ~ 1e7, hashable
    codes = hnms.iou_hash(boxes, 0.7, backend=backend)
    assert (codes[0] == INVALID_CODE).all() and (codes[1] != INVALID_CODE).all()
    # large but representable: image coordinates of 1e6 px, boxes of 1 px, distinct cells
    far = torch.tensor([[1e6, 1e6, 1e6 + 1, 1e6 + 1], [1e6 + 3, 1e6, 1e6 + 4, 1e6 + 1]])
    far = far.double()
    keep = hnms.hnms(far, torch.tensor([0.5, 0.4], dtype=torch.float64), 0.7, backend=backend)
    assert keep.tolist() == [0, 1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_give_the_float32_result(make_crowd, backend, dtype):
    boxes, scores = make_crowd(800, seed=8)
    boxes = boxes.round()  # exactly representable in every dtype (|x| < 1100 ... bf16: coarse)
    boxes = boxes.to(dtype).float()  # the values every dtype sees
    scores = scores.to(dtype).float()
    expected = hnms.hnms(boxes, scores, 0.7, backend=backend)
    got = hnms.hnms(boxes.to(dtype), scores.to(dtype), 0.7, backend=backend)
    assert torch.equal(got, expected)
    mixed = hnms.hnms(boxes.to(dtype), scores, 0.7, backend=backend)
    assert torch.equal(mixed, expected)


def test_non_contiguous_inputs(make_crowd, backend):
    boxes, scores = make_crowd(600, seed=9)
    wide = torch.cat([boxes, torch.zeros_like(boxes)], 1)[:, :4]  # row stride 8
    strided_scores = torch.stack([scores, scores], 1)[:, 0]
    assert not wide.is_contiguous() and not strided_scores.is_contiguous()
    assert torch.equal(
        hnms.hnms(wide, strided_scores, 0.7, 2, backend=backend),
        hnms.hnms(boxes, scores, 0.7, 2, backend=backend),
    )
    idxs = torch.arange(1200)[::2] % 3
    assert torch.equal(
        hnms.batched_hnms(wide, strided_scores, idxs, 0.7, backend=backend),
        hnms.batched_hnms(boxes, scores, idxs.contiguous(), 0.7, backend=backend),
    )


def test_output_sorted_by_score(make_crowd, backend):
    boxes, scores = make_crowd(2000, seed=10)
    keep = hnms.hnms(boxes, scores, 0.5, 2, backend=backend)
    kept_scores = scores[keep]
    assert (kept_scores[:-1] >= kept_scores[1:]).all()
    assert len(set(keep.tolist())) == len(keep)


def test_deterministic(make_crowd, backend):
    boxes, scores = make_crowd(2000, seed=11)
    runs = [hnms.hnms(boxes, scores, 0.7, 3, backend=backend) for _ in range(3)]
    assert all(torch.equal(r, runs[0]) for r in runs)


# ---------------------------------------------------------------- bad input


BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
SCORES = torch.tensor([0.5, 0.6])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"boxes": BOXES[:, :3]}, r"boxes must have shape \[N, 4\].*reshape"),
        ({"boxes": BOXES.view(-1)}, r"boxes must have shape \[N, 4\]"),
        ({"boxes": BOXES.long()}, r"boxes must be a floating-point tensor.*boxes.float\(\)"),
        ({"boxes": BOXES.tolist()}, r"boxes must be a torch.Tensor.*torch.as_tensor"),
        ({"scores": SCORES[:1]}, r"scores must have shape \[N\] with N = len\(boxes\) = 2"),
        ({"scores": SCORES[:, None]}, r"scores must have shape \[N\]"),
        ({"scores": SCORES.long()}, r"scores must be a floating-point tensor"),
        ({"scores": SCORES.to("meta")}, r"scores is on meta but boxes is on cpu.*\.to\("),
        ({"alpha": 0.0}, r"alpha must be a finite float in \(0.0, 1.0\).*not an IoU threshold"),
        ({"alpha": 1.0}, r"alpha must be .*alpha_for_iou"),
        ({"alpha": float("nan")}, r"alpha must be a finite float"),
        ({"alpha": "0.7"}, r"alpha must be a real number"),
        ({"num_hashes": 0}, r"num_hashes must be an integer >= 1"),
        ({"num_hashes": 1.5}, r"num_hashes must be an integer >= 1"),
        ({"num_hashes": True}, r"num_hashes must be an integer >= 1"),
        ({"w0": 0.0}, r"w0 must be a finite float > 0.0"),
        ({"bx": float("inf")}, r"bx must be a finite float"),
        ({"backend": "cuda"}, r"backend must be one of"),
    ],
)
def test_bad_input_hnms(kwargs, match):
    args = {"boxes": BOXES, "scores": SCORES, "alpha": 0.7, **kwargs}
    with pytest.raises(ValueError, match=match):
        hnms.hnms(**args)


@pytest.mark.parametrize(
    "idxs, match",
    [
        (torch.tensor([0, 1, 2]), r"idxs must have shape \[N\] with N = len\(boxes\) = 2"),
        (torch.tensor([0.0, 1.0]), r"idxs must be an integer tensor.*idxs.long\(\)"),
        (torch.tensor([0, 1], device="meta"), r"idxs is on meta but boxes is on cpu"),
        ([0, 1], r"idxs must be a torch.Tensor"),
    ],
)
def test_bad_input_batched(idxs, match):
    with pytest.raises(ValueError, match=match):
        hnms.batched_hnms(BOXES, SCORES, idxs, 0.7)


def test_bad_input_iou_hash():
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\]"):
        hnms.iou_hash(BOXES[:, :2], 0.7)
    with pytest.raises(ValueError, match="alpha"):
        hnms.iou_hash(BOXES, 1.5)
    with pytest.raises(ValueError, match="h0"):
        hnms.iou_hash(BOXES, 0.7, h0=-1.0)


def test_int_idxs_of_any_width_and_tensor_alpha(backend):
    idxs = torch.tensor([0, 1], dtype=torch.int32)
    keep = hnms.batched_hnms(BOXES, SCORES, idxs, torch.tensor(0.7), backend=backend)
    assert keep.tolist() == [1, 0]


@needs_ext
def test_compiled_op_checks_its_arguments_too():
    with pytest.raises(RuntimeError, match="boxes must have shape"):
        torch.ops.hnms.hnms(BOXES[:, :3], SCORES, BOXES.new_empty(0).long(), 0.7, 1, 1, 1, 0, 0)
    with pytest.raises(RuntimeError, match="alpha must be in"):
        torch.ops.hnms.hnms(BOXES, SCORES, BOXES.new_empty(0).long(), 1.0, 1, 1, 1, 0, 0)


# ---------------------------------------------------------------- pure-torch fallback


def test_fallback_without_the_extension(monkeypatch, make_crowd, caplog):
    boxes, scores = make_crowd(500, seed=12)
    expected = hnms.hnms(boxes, scores, 0.7, backend="torch")
    monkeypatch.setattr(_ext, "_STATE", {"loaded": True, "module": None})
    assert torch.equal(hnms.hnms(boxes, scores, 0.7), expected)
    assert not _ext.has_cuda_kernels()
    with pytest.raises(RuntimeError, match="backend='ext' needs hnms._C"):
        hnms.hnms(boxes, scores, 0.7, backend="ext")


def test_loader_logs_once_when_missing(monkeypatch, caplog):
    def missing(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(_ext, "_STATE", {"loaded": False, "module": None})
    monkeypatch.setattr(_ext.importlib, "import_module", missing)
    with caplog.at_level("WARNING", logger="hnms._ext"):
        assert _ext.load() is None
        assert _ext.load() is None
    assert sum("hnms._C is not built" in r.message for r in caplog.records) == 1


def test_inputs_that_require_grad(backend):
    boxes = BOXES.clone().requires_grad_()
    scores = SCORES.clone().requires_grad_()
    assert hnms.hnms(boxes, scores, 0.7, backend=backend).tolist() == [1, 0]
    assert hnms.iou_hash(boxes, 0.7, backend=backend).tolist() == [[6, 6, 3, 3], [6, 6, 4, 4]]


# ---------------------------------------------------------------- precision limits and parameters


def test_code_components_beyond_2_52_are_unhashable_on_every_backend(backend):
    # The issue's box: centre ~2e13 times its size; x / δ ~ 3e16 > 2^52, where float64 no longer
    # holds the fraction the rounding of Eq. (6) needs (the backends used to disagree in the last
    # digits: 33364982598730728 vs ...724).
    big = torch.tensor(
        [[21780018306597.21, 21780018306597.21, 21780018306598.516, 21780018306598.516]],
        dtype=torch.float64,
    )
    assert (hnms.iou_hash(big, 0.999, backend=backend) == INVALID_CODE).all()
    # Two touching boxes one ulp wide (IoU 0): their x / δ differ by less than one ulp of x / δ
    # (~2.3e16), so they used to share a cell and HNMS dropped one that NMS keeps.
    x = 7173467451.616294
    u = math.ulp(x)
    boxes = torch.tensor([[x, x, x + u, x + u], [x + u, x, x + 2 * u, x + u]], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8], dtype=torch.float64)
    assert box_iou(boxes, boxes)[0, 1] == 0
    keep = hnms.hnms(boxes, scores, 0.5, backend=backend)
    assert keep.tolist() == nms(boxes, scores, 0.5).tolist() == [0, 1]
    # just inside the limit: x / δ ~ 2^51 is hashable
    inside = torch.tensor([[2.0**50, 0.0, 2.0**50 + 3.0, 3.0]], dtype=torch.float64)
    codes = hnms.iou_hash(inside, 0.5, backend=backend)  # W_2 = 4, δ = 4/3: x / δ = 0.75 2^50
    assert codes.tolist() == [[2, 2, 3 * 2**48 + 1, 1]]


@needs_ext
def test_the_issue_example_agrees_between_backends():
    big = torch.tensor(
        [[21780018306597.21, 21780018306597.21, 21780018306598.516, 21780018306598.516]],
        dtype=torch.float64,
    )
    assert torch.equal(
        hnms.iou_hash(big, 0.999, backend="ext"), hnms.iou_hash(big, 0.999, backend="torch")
    )


def test_cells_whose_size_overflows_are_unhashable(backend):
    # width 1.75e308 at α = 0.3: i = 590 and W_590 = 0.3^-590 overflows to inf, so 1 / δ = 0 and
    # every centre used to get m = 0: two touching boxes (IoU 0) shared a cell.
    boxes = torch.tensor([[-1.75e308, 0, 0, 1], [0, 0, 1.75e308, 1]], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8], dtype=torch.float64)
    assert (hnms.iou_hash(boxes, 0.3, backend=backend) == INVALID_CODE).all()
    assert hnms.hnms(boxes, scores, 0.3, backend=backend).tolist() == [0, 1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bx": 1e300}, r"bx must be a finite float with \|bx\| < 2\^52"),
        ({"by": -(2.0**53)}, r"by must be a finite float with \|by\| < 2\^52"),
        ({"bx": float("nan")}, r"bx must be a finite float"),
        ({"w0": float("inf")}, r"w0 must be a finite float > 0"),
        ({"h0": float("nan")}, r"h0 must be a finite float > 0"),
        # W0^(k) = W0 α^(-k/K) of Eq. (16) overflows for the second hash function
        ({"w0": 1e308, "alpha": 0.01, "num_hashes": 2}, r"w0 .* Eq. \(16\)"),
    ],
)
def test_parameters_that_make_every_code_invalid_are_rejected(kwargs, match):
    args = {"boxes": BOXES, "scores": SCORES, "alpha": 0.7, **kwargs}
    with pytest.raises(ValueError, match=match):
        hnms.hnms(**args)


@needs_ext
@pytest.mark.parametrize(
    "params, match",
    [
        ((0.7, float("nan"), 1.0, 0.0, 0.0), "w0 and h0 must be finite and > 0"),
        ((0.7, 1.0, float("inf"), 0.0, 0.0), "w0 and h0 must be finite and > 0"),
        ((0.7, 1.0, 1.0, float("inf"), 0.0), r"bx and by must be finite with \|b\| < 2\^52"),
        ((0.7, 1.0, 1.0, 0.0, float("nan")), r"bx and by must be finite"),
        ((0.7, 1.0, 1.0, 1e300, 0.0), r"bx and by must be finite with \|b\| < 2\^52"),
        ((float("nan"), 1.0, 1.0, 0.0, 0.0), r"alpha must be in \(0, 1\)"),
    ],
)
def test_registered_ops_validate_the_hash_parameters(params, match):
    groups = BOXES.new_empty(0).long()
    with pytest.raises(RuntimeError, match="iou_hash: " + match):
        torch.ops.hnms.iou_hash(BOXES, *params)
    alpha, w0, h0, bx, by = params
    with pytest.raises(RuntimeError, match="hnms: " + match):
        torch.ops.hnms.hnms(BOXES, SCORES, groups, alpha, 1, w0, h0, bx, by)
    with pytest.raises(RuntimeError, match=r"hnms: w0 and h0 .* Eq. \(16\)"):
        torch.ops.hnms.hnms(BOXES, SCORES, groups, 0.01, 2, 1e308, 1.0, 0.0, 0.0)


def test_numpy_scalars_and_other_real_numbers_are_accepted(backend):
    np = pytest.importorskip("numpy")
    from fractions import Fraction

    expected = hnms.hnms(BOXES, SCORES, 0.7, 2, backend=backend)
    for alpha in (np.float32(0.7), np.float64(0.7), Fraction(7, 10)):
        got = hnms.hnms(BOXES, SCORES, alpha, np.int64(2), w0=np.float32(1), bx=np.int32(0),
                        backend=backend)  # fmt: skip
        assert torch.equal(got, expected)
    assert hnms.iou_hash(BOXES, np.float16(0.7), h0=np.int8(1), backend=backend).tolist() == [
        [6, 6, 3, 3],
        [6, 6, 4, 4],
    ]
    keep = hnms.batched_hnms(BOXES, SCORES, torch.tensor([0, 1]), 0.7, num_hashes=np.uint8(1))
    assert keep.tolist() == [1, 0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": True}, r"alpha must be a real number \(not bool.*got bool True"),
        ({"w0": False}, r"w0 must be a real number \(not bool.*got bool False"),
        ({"alpha": 0.7j}, r"alpha must be a real number"),
        ({"num_hashes": 2.0}, r"num_hashes must be an integer >= 1"),
        ({"num_hashes": "2"}, r"num_hashes must be an integer >= 1"),
    ],
)
def test_non_real_parameters_are_rejected(kwargs, match):
    np = pytest.importorskip("numpy")
    args = {"boxes": BOXES, "scores": SCORES, "alpha": 0.7, **kwargs}
    with pytest.raises(ValueError, match=match):
        hnms.hnms(**args)
    with pytest.raises(ValueError, match=r"num_hashes must be an integer >= 1"):
        hnms.hnms(BOXES, SCORES, 0.7, np.bool_(True))


def test_extreme_but_valid_base_sizes_hash_ordinary_boxes(backend):
    # W_i = W0 / α^i is computed as exp(log W0 - i log α): with a subnormal W0 = 5e-324 the old
    # W0 * exp(-i log α) overflowed (exp(746.5)) and every box was unhashable (found by the
    # property tests)
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [200, 0, 210, 8]], dtype=torch.float64)
    for w0 in (5e-324, 1e-300, 1e300, 1.7e308):
        codes = hnms.iou_hash(boxes, 0.7, w0=w0, h0=w0, backend=backend)
        assert (codes != INVALID_CODE).all(), w0
        if HAS_EXT:
            assert torch.equal(codes, hnms.iou_hash(boxes, 0.7, w0=w0, h0=w0, backend="ext"))


def test_hash_arithmetic_rounds_each_operation(backend, fma_border):
    # x * (1/δ) - b must round twice, as IEEE double does; a fused multiply-add (one rounding)
    # moves these boxes to the next cell (hnms_hash.h; setup.py builds without contraction)
    boxes, alpha, b, expected = fma_border()
    assert len(boxes) >= 5
    codes = hnms.iou_hash(boxes, alpha, bx=b, by=b, backend=backend)
    assert torch.equal(codes[:, 0], torch.zeros_like(expected))  # i = 0: W_0 = 1
    assert torch.equal(codes[:, 2], expected) and torch.equal(codes[:, 3], expected)
