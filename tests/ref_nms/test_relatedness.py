"""ref_nms.relatedness: Eqs. (1)-(2) on hand-set weights (ref_nms.md §7 T4), the expression
encoder (padding, empty expressions, vocabulary T7), score fusion, bad input."""

import math

import numpy as np
import pytest
import torch

from ref_nms import (
    UNK,
    ExpressionEncoder,
    RelatednessModule,
    WordLookup,
    WordVectors,
    add_ref_nms_config,
    build_vocabulary,
    fuse_scores,
    masked_softmax,
)

WORDS = {
    "red": (1.0, 0.0, 0.0, 0.5),
    "blue": (0.0, 1.0, 0.0, -0.5),
    "circle": (0.0, 0.0, 1.0, 0.2),
    "square": (0.3, -0.2, 0.0, 1.0),
    "left": (-1.0, 0.5, 0.5, 0.0),
}


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def module(visual_dim, word_dim, hidden_dim, relu=True, dtype=torch.float64):
    m = RelatednessModule(
        visual_dim=visual_dim,
        word_dim=word_dim,
        hidden_dim=hidden_dim,
        attention_dropout=0.0,
        fusion_dropout=0.0,
        relu_before_norm=relu,
    )
    return m.to(dtype).eval()


def set_linear(layer, weight, bias=None):
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.zeros_like(layer.bias) if bias is None else torch.as_tensor(bias))


@pytest.fixture(scope="module")
def wv():
    return WordVectors(WORDS)


@pytest.fixture(scope="module")
def encoder(wv):
    torch.manual_seed(0)
    return ExpressionEncoder(embed_dim=4, hidden_size=3, lookup=WordLookup(wv)).double().eval()


# ------------------------------------------------------------------------------------------------
# Eqs. (1)-(2) on hand-set weights


def test_eq1_attention_hand_values_t4():
    """w1 = (1, 0), w2 = (0, 1), a padded position; FC_s gives a = [ln 3, 0, (pad)] ->
    α = [0.75, 0.25, 0], q = (0.75, 0.25)."""
    m = module(visual_dim=1, word_dim=2, hidden_dim=1)
    # FC_s on [v^a; w]: the v^a half cancels in the softmax, so give it a non-zero weight
    set_linear(m.fc_s, [[0.7, -1.3, math.log(3.0), 0.0]], [5.0])
    words = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    key = torch.tensor([[2.0, 3.0]], dtype=torch.float64)
    alpha, q = m.attend(key, words, mask)
    assert alpha[0].tolist() == pytest.approx([0.75, 0.25, 0.0], abs=1e-12)
    assert q[0].tolist() == pytest.approx([0.75, 0.25], abs=1e-12)


@pytest.mark.parametrize(
    "relu, logit, r",
    [(True, 1.386750, 0.800073), (False, 0.727607, 0.674280)],
    ids=["released-relu", "paper"],
)
def test_eq2_fusion_hand_values_t4(relu, logit, r):
    """v^b = (1, −2, 2), q = (3, 1, 1): code m = (3, 0, 2)/√13, paper m = (3, −2, 2)/√17;
    FC_r = (1, 1, 1), bias 0."""
    m = module(visual_dim=1, word_dim=3, hidden_dim=1, relu=relu)
    set_linear(m.mlp_b[0], [[1.0]])
    set_linear(m.mlp_b[2], [[1.0], [-2.0], [2.0]])
    set_linear(m.fc_r, [[1.0, 1.0, 1.0]])
    v = torch.tensor([[1.0]], dtype=torch.float64)
    words = torch.tensor([[[3.0, 1.0, 1.0]]], dtype=torch.float64)  # one word: α = 1, q = w
    logits = m(v, words, torch.tensor([[True]]))
    assert logits.shape == (1,)
    assert float(logits[0]) == pytest.approx(logit, abs=1e-6)
    assert float(torch.sigmoid(logits)[0]) == pytest.approx(r, abs=1e-6)
    expected = (5 / math.sqrt(13)) if relu else (3 / math.sqrt(17))
    assert float(logits[0]) == pytest.approx(expected, abs=1e-12)


def numpy_reference(m, v, words, mask, expr_index, relu=True):
    """Eqs. (1)-(2) written out in numpy (float64) from the module's weights."""
    p = {k: t.detach().numpy().astype(np.float64) for k, t in m.state_dict().items()}

    def mlp(prefix, x):
        h = np.maximum(x @ p[f"{prefix}.0.weight"].T + p[f"{prefix}.0.bias"], 0.0)
        return h @ p[f"{prefix}.2.weight"].T + p[f"{prefix}.2.bias"]

    va, vb = mlp("mlp_a", v), mlp("mlp_b", v)
    q_dim = words.shape[2]
    logits, alphas = [], []
    for i, e in enumerate(expr_index):
        n = int(mask[e].sum())
        w = words[e, :n]
        a = np.array([p["fc_s.weight"][0] @ np.concatenate([va[i], w[j]]) for j in range(n)])
        a = a + p["fc_s.bias"][0]
        alpha = np.exp(a - a.max()) / np.exp(a - a.max()).sum() if n else np.zeros(0)
        q = (alpha[:, None] * w).sum(0) if n else np.zeros(q_dim)
        prod = vb[i] * q
        if relu:
            prod = np.maximum(prod, 0.0)
        norm = np.sqrt((prod**2).sum())
        mvec = prod / norm if norm > 0 else prod
        logits.append(mvec @ p["fc_r.weight"][0] + p["fc_r.bias"][0])
        alphas.append(np.concatenate([alpha, np.zeros(words.shape[1] - n)]))
    return np.array(logits), np.stack(alphas)


@pytest.mark.parametrize("relu", [True, False])
def test_forward_matches_numpy_reference_with_expr_index(relu):
    torch.manual_seed(1)
    m = module(visual_dim=3, word_dim=2, hidden_dim=4, relu=relu)
    with torch.no_grad():  # non-zero biases so that every term is exercised
        for layer in (m.mlp_a[0], m.mlp_a[2], m.mlp_b[0], m.mlp_b[2], m.fc_s, m.fc_r):
            layer.bias.uniform_(-0.5, 0.5)
    v = torch.randn(5, 3, dtype=torch.float64)
    words = torch.randn(2, 4, 2, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    words[0, 3] = 100.0  # padding must not matter
    expr_index = torch.tensor([1, 0, 0, 1, 0])
    logits, alpha = m(v, words, mask, expr_index, return_attention=True)
    ref_logits, ref_alpha = numpy_reference(
        m, v.numpy(), words.numpy(), mask.numpy(), [1, 0, 0, 1, 0], relu
    )
    np.testing.assert_allclose(logits.detach().numpy(), ref_logits, atol=1e-12)
    np.testing.assert_allclose(alpha.detach().numpy(), ref_alpha, atol=1e-12)
    # one expression per region (B = R), without expr_index: same result
    again = m(v, words[expr_index], mask[expr_index])
    torch.testing.assert_close(again, logits)


def test_attention_is_the_same_for_every_region_in_eval_mode():
    """FC_s is linear on [v^a_i; w_j]: the region term cancels in softmax_j (module docstring)."""
    torch.manual_seed(2)
    m = module(visual_dim=6, word_dim=4, hidden_dim=5)
    v = torch.randn(7, 6, dtype=torch.float64)
    words = torch.randn(1, 3, 4, dtype=torch.float64)
    _, alpha = m(v, words, torch.ones(1, 3, dtype=torch.bool), return_attention=True)
    torch.testing.assert_close(alpha, alpha[:1].expand_as(alpha))


def test_dropout_is_active_in_training_only():
    torch.manual_seed(3)
    m = RelatednessModule(visual_dim=4, word_dim=2, hidden_dim=3).double()
    v = torch.randn(6, 4, dtype=torch.float64)
    words = torch.randn(1, 3, 2, dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    m.eval()
    assert torch.equal(m(v, words, mask), m(v, words, mask))
    m.train()
    outs = [m(v, words, mask) for _ in range(5)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_released_initialisation_xavier_weights_zero_biases():
    m = RelatednessModule(visual_dim=8, word_dim=4, hidden_dim=6)
    for layer in (m.mlp_a[0], m.mlp_a[2], m.mlp_b[0], m.mlp_b[2], m.fc_s, m.fc_r):
        assert torch.count_nonzero(layer.bias) == 0
        bound = math.sqrt(6.0 / sum(layer.weight.shape))
        assert float(layer.weight.abs().max()) <= bound
    enc = ExpressionEncoder(embed_dim=4, hidden_size=3)
    assert torch.count_nonzero(enc.gru.bias_ih_l0) == 0
    assert enc.output_dim == 6


def test_masked_softmax_rows():
    scores = torch.tensor([[1.0, 2.0, 50.0], [0.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    alpha = masked_softmax(scores, mask)
    e = math.exp(1.0)
    assert alpha[0].tolist() == pytest.approx([1 / (1 + e), e / (1 + e), 0.0])
    assert alpha[1].tolist() == [0.0, 0.0, 0.0]
    (alpha * torch.arange(3.0)).sum().backward()
    assert torch.isfinite(scores.grad).all()


# ------------------------------------------------------------------------------------------------
# Expression encoder: vocabulary, lookup, padding, empty expressions


def test_build_vocabulary_t7():
    wv = WordVectors({"the": (1.0, 0.0), "man": (0.0, 1.0), "zebra": (1.0, 1.0)})
    tokens = [["the"] * 5, ["man", "man"], ["zebra"], ["qwerty"] * 3]
    vocab = build_vocabulary(tokens, wv, min_count=2)
    assert vocab == [UNK, "man", "the"]
    lookup = WordLookup(wv, vocab)
    assert [lookup.index(w) for w in ("man", "the", "zebra", "qwerty", "The")] == [1, 2, 0, 0, 2]
    emb, lengths = lookup([["the", "zebra", "man"], []])
    assert emb.shape == (2, 3, 2) and lengths.tolist() == [3, 0]
    assert emb[0].tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]  # zebra -> <unk> = 0
    assert torch.count_nonzero(emb[1]) == 0
    assert "weight" not in lookup.state_dict()  # the table is data, not a checkpoint entry


def test_lookup_truncates_to_max_length(wv):
    lookup = WordLookup(wv)
    emb, lengths = lookup([["red", "circle", "left"], ["blue"]], max_length=2)
    assert emb.shape == (2, 2, 4) and lengths.tolist() == [2, 1]


def test_padded_and_unpadded_batches_give_the_same_outputs(encoder):
    exprs = [["red", "circle", "left", "square"], ["blue"], ["square", "red"]]
    feats, mask = encoder(exprs)
    assert feats.shape == (3, 4, 6) and mask.sum(1).tolist() == [4, 1, 2]
    assert torch.count_nonzero(feats[~mask]) == 0  # padded positions are zero
    for i, tokens in enumerate(exprs):
        alone, alone_mask = encoder([tokens])
        n = len(tokens)
        assert alone_mask[0].all() and alone.shape[1] == n
        torch.testing.assert_close(feats[i, :n], alone[0], rtol=0, atol=1e-12)
    # ... and through the relatedness module, regions grouped by expr_index
    torch.manual_seed(4)
    m = module(visual_dim=5, word_dim=6, hidden_dim=7)
    v = torch.randn(6, 5, dtype=torch.float64)
    expr_index = torch.tensor([0, 1, 2, 0, 2, 1])
    batched = m(v, feats, mask, expr_index)
    for i, tokens in enumerate(exprs):
        alone, alone_mask = encoder([tokens])
        sel = expr_index == i
        torch.testing.assert_close(batched[sel], m(v[sel], alone, alone_mask), rtol=0, atol=1e-12)


def test_encoder_tensor_input_matches_token_input(encoder):
    emb, lengths = encoder.lookup([["red", "square"], ["left"]])
    emb = torch.cat([emb, torch.full((2, 3, 4), 7.0, dtype=emb.dtype)], dim=1)  # junk padding
    a, amask = encoder([["red", "square"], ["left"]])
    b, bmask = encoder(emb, lengths)
    assert b.shape == (2, 5, 6)
    torch.testing.assert_close(b[:, :2], a)
    assert torch.equal(bmask[:, :2], amask) and not bmask[:, 2:].any()


def test_empty_expression_gives_a_constant_relatedness_without_nan(encoder):
    feats, mask = encoder([[], ["red", "circle"], []])
    assert feats.shape == (3, 2, 6)
    assert mask[0].tolist() == [False, False] and mask[2].tolist() == [False, False]
    assert torch.count_nonzero(feats[0]) == 0
    only_empty, only_mask = encoder([[]])
    assert only_empty.shape == (1, 1, 6) and not only_mask.any()

    torch.manual_seed(5)
    m = RelatednessModule(visual_dim=5, word_dim=6, hidden_dim=7).double()
    with torch.no_grad():
        m.fc_r.bias.fill_(0.3)
    v = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    m.train()  # dropout on: still no NaN
    logits, alpha = m(v, only_empty, only_mask, return_attention=True)
    assert torch.count_nonzero(alpha) == 0
    assert logits.tolist() == pytest.approx([0.3] * 4)  # r̂ = FC_r bias: r is constant
    logits.sum().backward()
    assert torch.isfinite(v.grad).all()
    for p in m.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_built_from_config_with_small_dims():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_ref_nms_config(cfg)
    cfg.MODEL.REF_NMS.WORD_EMBED_DIM = 4
    cfg.MODEL.REF_NMS.GRU_HIDDEN_DIM = 3
    cfg.MODEL.REF_NMS.MLP_HIDDEN_DIM = 8
    enc = ExpressionEncoder(cfg)
    m = RelatednessModule(cfg, visual_dim=16)
    assert enc.output_dim == 6 and m.word_dim == 6 and m.visual_dim == 16
    assert m.mlp_a[0].out_features == 8 and m.relu_before_norm
    assert m.attention_dropout.p == 0.5 and m.fusion_dropout.p == 0.5
    feats, mask = enc(torch.randn(2, 3, 4), torch.tensor([3, 1]))
    logits = m(torch.randn(5, 16), feats, mask, torch.tensor([0, 0, 1, 1, 1]))
    assert logits.shape == (5,) and logits.dtype == torch.float32
    # the released sizes: 6,104,578 new parameters (ref_nms.md §1.3)
    big = sum(p.numel() for p in RelatednessModule(visual_dim=2048).parameters())
    big += sum(p.numel() for p in ExpressionEncoder().parameters())
    assert big == 6_104_578


def test_no_regions():
    m = module(visual_dim=3, word_dim=2, hidden_dim=2)
    words = torch.randn(1, 2, 2, dtype=torch.float64)
    out = m(torch.zeros(0, 3, dtype=torch.float64), words, torch.ones(1, 2, dtype=torch.bool))
    assert out.shape == (0,)


# ------------------------------------------------------------------------------------------------
# Score fusion


def test_fuse_scores_is_elementwise_product():
    r = torch.tensor([0.2, 0.9, 0.5, 0.5])
    c = torch.tensor([0.9, 0.6, 0.3, 0.5])
    assert fuse_scores(r, c).tolist() == pytest.approx([0.18, 0.54, 0.15, 0.25])
    assert fuse_scores(torch.sigmoid(torch.tensor([math.log(0.25)])), c[:1]).item() == (
        pytest.approx(0.18)
    )


@pytest.mark.parametrize(
    "r, c, name",
    [
        (torch.tensor([0.5, 1.2]), torch.tensor([0.5, 0.5]), "relatedness"),
        (torch.tensor([0.5, 0.2]), torch.tensor([-0.1, 0.5]), "confidence"),
        (torch.tensor([0.5, float("nan")]), torch.tensor([0.5, 0.5]), "relatedness"),
        (torch.tensor([0.5, 0.2]), torch.tensor([0.5, 0.5, 0.5]), "same shape"),
        (torch.tensor([1, 0]), torch.tensor([0.5, 0.5]), "relatedness"),
    ],
)
def test_fuse_scores_bad_input(r, c, name):
    with pytest.raises(ValueError, match=name):
        fuse_scores(r, c)


# ------------------------------------------------------------------------------------------------
# Bad input


def test_relatedness_module_bad_input():
    m = module(visual_dim=3, word_dim=2, hidden_dim=2)
    v = torch.randn(4, 3, dtype=torch.float64)
    words = torch.randn(2, 3, 2, dtype=torch.float64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    idx = torch.tensor([0, 1, 1, 0])
    with pytest.raises(ValueError, match="region_features"):
        m(torch.randn(4, 5, dtype=torch.float64), words, mask, idx)
    bad = v.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="region_features contains NaN"):
        m(bad, words, mask, idx)
    with pytest.raises(ValueError, match="word_features"):
        m(v, torch.randn(2, 3, 4, dtype=torch.float64), mask, idx)
    with pytest.raises(ValueError, match="word_mask"):
        m(v, words, torch.ones(2, 4, dtype=torch.bool), idx)
    with pytest.raises(ValueError, match="word_mask"):
        m(v, words, torch.ones(2, 3), idx)
    with pytest.raises(ValueError, match="expr_index"):
        m(v, words, mask, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="expr_index"):
        m(v, words, mask, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="expr_index"):
        m(v, words, mask)  # B = 2 expressions for R = 4 regions
    with pytest.raises(ValueError, match="region_features has dtype"):
        m(v.float(), words, mask, idx)
    with pytest.raises(ValueError, match="visual_dim"):
        RelatednessModule(visual_dim=0)
    with pytest.raises(ValueError, match="attention_dropout"):
        RelatednessModule(visual_dim=3, attention_dropout=1.0)


def test_encoder_bad_input(wv, encoder):
    with pytest.raises(ValueError, match="tokenised"):
        encoder(["red circle"])
    with pytest.raises(ValueError, match="no lookup"):
        ExpressionEncoder(embed_dim=4, hidden_size=2)([["red"]])
    with pytest.raises(ValueError, match="lengths is required"):
        encoder(torch.zeros(1, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="lengths must be <="):
        encoder(torch.zeros(1, 2, 4, dtype=torch.float64), torch.tensor([3]))
    with pytest.raises(ValueError, match="expressions must be"):
        encoder(torch.zeros(1, 2, 5, dtype=torch.float64), torch.tensor([1]))
    with pytest.raises(ValueError, match="expressions contains NaN"):
        encoder(torch.full((1, 2, 4), float("nan"), dtype=torch.float64), torch.tensor([1]))
    with pytest.raises(ValueError, match="embed_dim"):
        ExpressionEncoder(embed_dim=5, hidden_size=2, lookup=WordLookup(wv))
    with pytest.raises(ValueError, match="max_length"):
        encoder([["red"]], max_length=0)
    with pytest.raises(ValueError, match="min_count"):
        build_vocabulary([["red"]], wv, min_count=0)


def test_module_and_encoder_learn_a_toy_relatedness(wv):
    """A few Adam steps of Eq. (3) on a toy task: regions whose feature matches the colour word of
    the expression are related. The loss must fall well below its start."""
    from ref_nms import bce_loss

    torch.manual_seed(6)
    enc = ExpressionEncoder(embed_dim=4, hidden_size=4, lookup=WordLookup(wv))
    m = RelatednessModule(visual_dim=2, word_dim=8, hidden_dim=16, attention_dropout=0.0,
                          fusion_dropout=0.0)  # fmt: skip
    opt = torch.optim.Adam(list(enc.parameters()) + list(m.parameters()), lr=0.02)
    exprs = [["red", "circle"], ["blue", "square", "left"]]
    v = torch.randn(64, 2)
    idx = torch.randint(0, 2, (64,))
    targets = ((v[:, 0] > 0) == (idx == 0)).float()  # red <-> x > 0, blue <-> x <= 0
    losses = []
    for _ in range(60):
        feats, mask = enc(exprs)
        loss = bce_loss(m(v, feats, mask, idx), targets, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
