"""Cleanliness (Eq. 3), re-weighting (Eq. 4) and soft labels, both variants, by hand."""

import pytest
import torch

from noisy_anchors import (
    cleanliness,
    released_reweighting,
    released_soft_labels,
    reweighting,
    soft_labels_and_weights,
)

T = torch.tensor


def _close(a, b, tol=1e-5):
    return torch.allclose(a, T(b, dtype=a.dtype), atol=tol, rtol=0)


def test_cleanliness_eq3_by_hand():
    # 0.75*0.8 + 0.25*0.4 = 0.7; 0.75*0.5 + 0.25*1.0 = 0.625
    assert _close(cleanliness(T([0.8, 0.5]), T([0.4, 1.0]), 0.75), [0.7, 0.625])
    assert _close(cleanliness(T([0.8, 0.5]), T([0.4, 1.0]), 1.0), [0.8, 0.5])
    assert _close(cleanliness(T([0.8, 0.5]), T([0.4, 1.0]), 0.0), [0.4, 1.0])
    assert cleanliness(T([]), T([]), 0.5).shape == (0,)


def test_reweighting_eq4_by_hand():
    loc, cls = T([0.5, 0.75]), T([0.5, 0.0])
    # f(loc) = [2, 4], f(cls) = [2, 1]; r = [0.75*2 + 0.25*2, 0.75*4 + 0.25*1] = [2, 3.25]
    # normalised by the mean 2.625
    assert _close(reweighting(loc, cls, 0.75, 1.0), [2 / 2.625, 3.25 / 2.625])
    # gamma = 2: [4, 10.5625] / 7.28125
    assert _close(reweighting(loc, cls, 0.75, 2.0), [4 / 7.28125, 10.5625 / 7.28125])
    # gamma = 0: SR disabled, all ones
    assert _close(reweighting(loc, cls, 0.75, 0.0), [1.0, 1.0])
    assert reweighting(T([]), T([]), 0.75, 1.0).shape == (0,)


def test_reweighting_has_mean_one_and_is_finite_at_one():
    gen = torch.Generator().manual_seed(0)
    loc, cls = torch.rand(50, generator=gen), torch.rand(50, generator=gen)
    r = reweighting(loc, cls, 0.75, 1.5)
    assert torch.isclose(r.mean(), T(1.0)) and (r > 0).all()
    # loc_a = 1 or cls_c = 1: f is evaluated at 1 - eps = 0.999 -> 1000
    r = reweighting(T([1.0, 0.0]), T([0.0, 1.0]), 0.5, 1.0)
    assert torch.isfinite(r).all()
    assert _close(r, [1.0, 1.0])  # symmetric: both 0.5*1000 + 0.5*1
    r = reweighting(T([1.0, 0.0]), T([0.0, 0.0]), 0.5, 1.0)
    assert _close(r, [500.5 / 250.75, 1.0 / 250.75])
    r = reweighting(T([1.0, 0.0]), T([0.0, 0.0]), 0.5, 1.0, eps=0.5)  # f <= 2
    assert _close(r, [1.5 / 1.25, 1.0 / 1.25])


def test_released_soft_labels_by_hand():
    loc, cls = T([0.2, 0.6, 0.4]), T([0.5, 0.1, 0.3])
    # means 0.4, 0.3; s = 0.75*loc/0.4 + 0.25*cls/0.3 = [0.7917, 1.2083, 1.0]
    # rescaled to [0.4, 1]: 0.4 + (s - 0.7917) * 0.6 / 0.4167
    assert _close(released_soft_labels(loc, cls, 0.75), [0.4, 1.0, 0.7])
    # one positive (max s == min s): the released code divides by zero; here the label is 1
    assert _close(released_soft_labels(T([0.3]), T([0.2]), 0.75), [1.0])
    # a zero mean drops its term instead of dividing by zero
    out = released_soft_labels(T([0.2, 0.6]), T([0.0, 0.0]), 0.75)
    assert _close(out, [0.4, 1.0])


def test_released_reweighting_by_hand():
    loc, cls = T([0.5, 0.75]), T([0.5, 0.0])
    # f(loc)/mean = [2, 4]/3, f(cls)/mean = [2, 1]/1.5
    # r = 0.75*[2/3, 4/3] + 0.25*[4/3, 2/3] = [5/6, 7/6]
    r = released_reweighting(loc, cls, 0.75)
    assert _close(r, [5 / 6, 7 / 6])
    # γ != 1 (not in the released code): base^γ normalised to mean 1, [25, 49] / 37
    assert _close(released_reweighting(loc, cls, 0.75, gamma=2.0), [25 / 37, 49 / 37])
    assert torch.isfinite(released_reweighting(T([1.0, 0.2]), T([1.0, 1.0]), 0.75)).all()


def test_soft_labels_and_weights_switches_and_variants():
    loc, cls = T([0.5, 0.75, 0.2, 0.6, 0.4]), T([0.5, 0.0, 0.5, 0.1, 0.3])
    split = [2, 3]
    c, r = soft_labels_and_weights(loc, cls, split, alpha=0.75, gamma=1.0)
    assert _close(c, cleanliness(loc, cls, 0.75).tolist())
    assert _close(r, reweighting(loc, cls, 0.75, 1.0).tolist())  # batch-wide mean 1
    c, r = soft_labels_and_weights(loc, cls, split, alpha=0.75, gamma=1.0, soft_labels=False)
    assert _close(c, [1.0] * 5)
    c, r = soft_labels_and_weights(loc, cls, split, alpha=0.75, gamma=1.0, reweight=False)
    assert _close(r, [1.0] * 5)
    c, r = soft_labels_and_weights(loc, cls, split, alpha=0.75, gamma=1.0, variant="released")
    # per image: image 0 = the released_reweighting example, image 1 = the soft-label example
    assert _close(c[2:], [0.4, 1.0, 0.7])
    assert _close(r[:2], [5 / 6, 7 / 6])
    # image 0: means 0.625 and 0.25; s = 0.75*[0.8, 1.2] + 0.25*[2, 0] = [1.1, 0.9] -> [1, 0.625]
    assert _close(c[:2], [1.0, 0.625])
    c, r = soft_labels_and_weights(T([]), T([]), [0, 0], alpha=0.75, gamma=1.0, variant="released")
    assert c.shape == (0,) and r.shape == (0,)


@pytest.mark.parametrize("fn", [cleanliness, released_soft_labels])
@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_outside_unit_interval(fn, alpha):
    with pytest.raises(ValueError, match="alpha"):
        fn(T([0.5]), T([0.5]), alpha)


@pytest.mark.parametrize("fn", [reweighting, released_reweighting])
def test_bad_gamma_alpha_eps(fn):
    with pytest.raises(ValueError, match="gamma"):
        fn(T([0.5]), T([0.5]), 0.5, -1.0)
    with pytest.raises(ValueError, match="alpha"):
        fn(T([0.5]), T([0.5]), 2.0, 1.0)
    with pytest.raises(ValueError, match="eps"):
        fn(T([0.5]), T([0.5]), 0.5, 1.0, eps=0.0)


@pytest.mark.parametrize(
    "loc, cls, match",
    [
        (T([0.5, float("nan")]), T([0.5, 0.5]), "loc_a contains NaN"),
        (T([0.5, 0.5]), T([float("inf"), 0.5]), "cls_c contains NaN"),
        (T([0.5, 0.5]), T([0.5]), "same shape"),
        (T([[0.5]]), T([[0.5]]), r"shape \(P,\)"),
        (T([1.5]), T([0.5]), r"loc_a must lie in \[0, 1\]"),
        (T([0.5]), T([-0.1]), r"cls_c must lie in \[0, 1\]"),
        (T([1]), T([0]), "floating-point"),
    ],
)
def test_bad_scores(loc, cls, match):
    with pytest.raises(ValueError, match=match):
        cleanliness(loc, cls, 0.5)
    with pytest.raises(ValueError, match=match):
        reweighting(loc, cls, 0.5, 1.0)


def test_bad_variant_and_split():
    with pytest.raises(ValueError, match="variant"):
        soft_labels_and_weights(T([0.5]), T([0.5]), [1], alpha=0.5, gamma=1.0, variant="v2")
    with pytest.raises(ValueError, match="num_per_image"):
        soft_labels_and_weights(T([0.5]), T([0.5]), [2], alpha=0.5, gamma=1.0)


def test_reweighting_stays_finite_for_large_gamma():
    # f(0.9999) is capped at 1/ε = 1000: base = 0.75*1000 + 0.25/(1 - 0.3) = 750.36; base^20 =
    # 3e57 overflowed float32 and r / mean(r) gave [nan, 0]. In log space: r_i / mean r =
    # 2 / (1 + (b_2 / b_1)^20) ~ [2, 2 (b_2 / b_1)^20 ~ 1e-48 -> 0 in float32].
    r = reweighting(T([0.9999, 0.5]), T([0.3, 0.2]), 0.75, 20.0)
    assert torch.isfinite(r).all() and r.tolist() == pytest.approx([2.0, 0.0], abs=1e-6)
    b1, b2 = 0.75 * 1000 + 0.25 / 0.7, 0.75 * 2 + 0.25 / 0.8
    r64 = reweighting(T([0.9999, 0.5], dtype=torch.float64), T([0.3, 0.2]).double(), 0.75, 20.0)
    assert r64[1].item() == pytest.approx(2 * (b2 / b1) ** 20 / (1 + (b2 / b1) ** 20), rel=1e-9)
    for gamma in (1e3, 1e300):  # every finite γ: the heaviest anchors share all the weight
        r = reweighting(T([0.9999, 0.9999, 0.5]), T([0.3, 0.3, 0.2]), 0.75, gamma)
        assert r.tolist() == pytest.approx([1.5, 1.5, 0.0])
    half = reweighting(T([0.9999, 0.5]).half(), T([0.3, 0.2]).half(), 0.75, 20.0)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()


def test_released_reweighting_stays_finite_for_large_gamma():
    loc, cls = torch.linspace(0, 1, 200), torch.linspace(1, 0, 200)
    r = released_reweighting(loc, cls, 0.75, gamma=50.0)  # base up to ~100: 100^50 overflowed
    assert torch.isfinite(r).all() and r.mean().item() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("fn", [reweighting, released_reweighting])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_reweighting_is_finite_for_every_eps(fn, dtype):
    # 1 - ε rounds to 1 (ε < 2^-53 in float64, ε < 2^-11 in float16) and 1/ε overflows for
    # ε < 1/DBL_MAX: f(1) used to be inf and r NaN (found by the property tests). f is now
    # -log(max(1 - x, ε)) in log space.
    loc, cls = T([1.0, 0.5, 0.2], dtype=dtype), T([0.3, 1.0, 0.0], dtype=dtype)
    for eps in (1e-4, 1e-20, 5e-324):
        r = fn(loc, cls, 0.75, 1.0, eps=eps)
        assert torch.isfinite(r).all() and (r >= 0).all(), eps
        assert r.double().mean().item() == pytest.approx(1.0, rel=1e-2)
