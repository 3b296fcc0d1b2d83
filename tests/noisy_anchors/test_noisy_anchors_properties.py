"""Property-based tests of noisy_anchors's public functions (hypothesis; profile in
tests/conftest.py): random sizes, dtypes, empty and saturated inputs, extreme α, γ, ε and logits;
every property is a defined result (Eqs. 3-6 and Alg. 1's invariants) or a ValueError naming the
argument."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from noisy_anchors import (
    cleanliness,
    localization_accuracy,
    released_reweighting,
    released_soft_labels,
    reweighting,
    soft_labels_and_weights,
    soft_sigmoid_focal_loss,
    topn_anchor_assignment,
)

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
unit = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0, 0.9999, 1e-8, 0.5]))
alphas = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0, 0.75]))
gammas = st.one_of(st.floats(0.0, 50.0), st.sampled_from([0.0, 1.0, 2.0, 1e3, 1e300]))
epss = st.one_of(st.floats(1e-12, 0.999), st.sampled_from([1e-3, 5e-324, 0.5]))


@st.composite
def scores(draw, max_p=40):
    p = draw(st.integers(0, max_p))
    dtype = draw(st.sampled_from(DTYPES))
    loc = torch.tensor(draw(st.lists(unit, min_size=p, max_size=p)), dtype=torch.float64)
    cls = torch.tensor(draw(st.lists(unit, min_size=p, max_size=p)), dtype=torch.float64)
    return loc.to(dtype), cls.to(dtype)


@given(scores(), alphas)
def test_cleanliness_is_the_convex_combination_of_eq3(sc, alpha):
    loc, cls = sc
    c = cleanliness(loc, cls, alpha)
    assert c.dtype == loc.dtype and c.shape == loc.shape
    expected = alpha * loc.double() + (1 - alpha) * cls.double()
    torch.testing.assert_close(c.double(), expected, rtol=1e-2, atol=1e-2)
    assert ((c.double() >= -1e-3) & (c.double() <= 1 + 1e-3)).all()


@given(scores(), alphas, gammas, epss)
def test_reweighting_is_finite_mean_one_and_order_preserving(sc, alpha, gamma, eps):
    loc, cls = sc
    r = reweighting(loc, cls, alpha, gamma, eps)
    assert r.dtype == loc.dtype and r.shape == loc.shape
    assert torch.isfinite(r).all() and (r >= 0).all()
    if loc.numel():
        r64 = reweighting(loc.double(), cls.double(), alpha, gamma, eps)
        assert r64.mean().item() == pytest.approx(1.0, rel=1e-9)
        assert r64.max().item() <= loc.numel() * (1 + 1e-9)  # at most P times the mean
        # Eq. (4) is monotone in the base α f(loc_a) + (1 - α) f(cls_c), f = 1/max(1 - x, ε)
        log_f = lambda x: -torch.log((1 - x.double()).clamp(min=eps))  # noqa: E731
        log_w = lambda a: math.log(a) if a > 0 else -math.inf  # noqa: E731
        weighted = torch.stack([log_f(loc) + log_w(alpha), log_f(cls) + log_w(1 - alpha)])
        log_base = torch.logsumexp(weighted, 0)
        bigger = log_base[:, None] > log_base[None, :] + 1e-12 * (1 + log_base.abs().max())
        assert (r64[:, None] >= r64[None, :])[bigger].all()
        # equal inputs, bit-equal weights (whatever γ does to rounding differences)
        same = (loc[:, None] == loc[None, :]) & (cls[:, None] == cls[None, :])
        assert (r[:, None] == r[None, :])[same].all()
        if gamma == 0:
            assert (r == 1).all()


@given(scores(max_p=12), alphas, gammas, epss)
def test_released_variant_is_finite(sc, alpha, gamma, eps):
    loc, cls = sc
    r = released_reweighting(loc, cls, alpha, gamma, eps)
    assert torch.isfinite(r).all() and (r >= 0).all() and r.shape == loc.shape
    s = released_soft_labels(loc, cls, alpha)
    assert torch.isfinite(s).all() and (s.double() <= 1 + 1e-2).all()


@given(
    sc=scores(),
    alpha=alphas,
    gamma=gammas,
    variant=st.sampled_from(["paper", "released"]),
    split=st.integers(1, 3),
    soft=st.booleans(),
    reweight=st.booleans(),
)
def test_soft_labels_and_weights_shapes_and_ranges(
    sc, alpha, gamma, variant, split, soft, reweight
):
    loc, cls = sc
    p = loc.numel()
    per_image = [p // split] * (split - 1) + [p - (p // split) * (split - 1)]
    t, w = soft_labels_and_weights(
        loc, cls, per_image, alpha=alpha, gamma=gamma, variant=variant, soft_labels=soft,
        reweight=reweight,
    )  # fmt: skip
    assert t.shape == w.shape == (p,)
    assert torch.isfinite(t).all() and torch.isfinite(w).all() and (w >= 0).all()
    if not soft:
        assert (t == 1).all()
    if not reweight:
        assert (w == 1).all()


@pytest.mark.parametrize("fn", [reweighting, released_reweighting])
@given(
    name=st.sampled_from(["alpha", "gamma", "eps"]),
    value=st.sampled_from([math.nan, math.inf, -math.inf, -0.5, 1.5, 0.0, 1.0]),
)
def test_bad_scalars_give_a_value_error_naming_them(fn, name, value):
    args = {"alpha": 0.75, "gamma": 1.0, "eps": 1e-3, name: value}
    valid = {
        "alpha": 0 <= value <= 1,
        "gamma": 0 <= value < math.inf,
        "eps": 0 < value < 1,
    }[name]
    if valid:
        assert torch.isfinite(fn(torch.tensor([0.5, 1.0]), torch.tensor([0.2, 0.9]), **args)).all()
    else:
        with pytest.raises(ValueError, match=f"^{name}"):
            fn(torch.tensor([0.5, 1.0]), torch.tensor([0.2, 0.9]), **args)


@given(
    bad=st.sampled_from([math.nan, math.inf, -1e-3, 1.001]),
    which=st.sampled_from(["loc_a", "cls_c"]),
    fn=st.sampled_from([cleanliness, reweighting, released_soft_labels, released_reweighting]),
)
def test_bad_scores_give_a_value_error_naming_them(bad, which, fn):
    loc, cls = torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])
    (loc if which == "loc_a" else cls)[1] = bad
    args = (0.75,) if fn in (cleanliness, released_soft_labels) else (0.75, 1.0)
    with pytest.raises(ValueError, match=f"^{which}"):
        fn(loc, cls, *args)


@given(
    g=st.integers(0, 5),
    a=st.integers(0, 40),
    top_n=st.integers(1, 10),
    min_iou=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 999),
    quantise=st.booleans(),
)
def test_topn_assignment_invariants(g, a, top_n, min_iou, seed, quantise):
    gen = torch.Generator().manual_seed(seed)
    iou = torch.rand(g, a, generator=gen) * (torch.rand(g, a, generator=gen) < 0.6)
    if quantise:  # many ties
        iou = (iou * 4).floor() / 4
    matched, labels = topn_anchor_assignment(iou, top_n, min_iou)
    assert matched.shape == labels.shape == (a,)
    assert set(labels.tolist()) <= {0, 1}
    pos = labels == 1
    assert int(pos.sum()) <= min(a, g * top_n)
    assert ((matched >= 0) & (matched < max(g, 1))).all()
    if g and a:
        # a positive is among its matched ground truth's top-N and overlaps it by > min_iou ...
        chosen_iou = iou[matched[pos], torch.nonzero(pos).flatten()]
        assert (chosen_iou > min_iou).all()
        # ... and every ground truth selects at most N anchors
        for k in range(g):
            assert int((pos & (matched == k)).sum()) <= top_n
        # an anchor with IoU above every ground truth's N-th value (and > min_iou) is positive
        kth = iou.topk(min(top_n, a), dim=1).values[:, -1:]
        must = ((iou > kth) & (iou > min_iou)).any(0)
        assert pos[must].all()


@given(
    logits=st.lists(
        st.one_of(st.floats(-1e4, 1e4), st.sampled_from([-1e4, 0.0, 1e4])), min_size=0, max_size=20
    ),  # fmt: skip
    targets=st.lists(st.floats(0.0, 1.0), min_size=20, max_size=20),
    alpha=st.one_of(st.floats(0.0, 1.0), st.just(-1.0)),
    gamma=st.floats(0.0, 5.0),
)
def test_soft_focal_loss_is_finite_and_non_negative(logits, targets, alpha, gamma):
    x = torch.tensor(logits, requires_grad=True)
    t = torch.tensor(targets[: len(logits)])
    loss = soft_sigmoid_focal_loss(x, t, alpha, gamma)
    assert loss.shape == x.shape and torch.isfinite(loss).all() and (loss >= -1e-6).all()
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()


@given(
    st.lists(
        st.tuples(*[st.floats(-1e4, 1e4)] * 8).map(lambda v: [list(v[:4]), list(v[4:])]),
        max_size=20,
    )
)
def test_localization_accuracy_is_an_iou(pairs):
    pred = torch.tensor([p for p, _ in pairs], dtype=torch.float32).reshape(-1, 4)
    gt = torch.tensor([q for _, q in pairs], dtype=torch.float32).reshape(-1, 4)
    iou = localization_accuracy(pred, gt)
    assert iou.shape == (len(pairs),) and ((iou >= 0) & (iou <= 1)).all()
    assert torch.equal(localization_accuracy(gt, pred), iou)  # symmetric
