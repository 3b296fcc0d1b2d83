"""The relatedness module of Ref-NMS (paper §3 "Relatedness Module", Eqs. (1)-(2)) and the score
fusion s = r·c that NMS sorts by.

- :func:`build_vocabulary` and :class:`WordLookup`: the fixed word embeddings (GloVe rows for the
  vocabulary, ``<unk>`` = index 0 = a zero vector), as released (ref_nms.md §1.2, §6 #8-#9).
- :class:`ExpressionEncoder`: e_q, a Bi-GRU over the embedded words -> word features w_j and a
  mask of the real (non-padded) words.
- :class:`RelatednessModule`: Eq. (1) (per-region soft attention over the words -> q_i) and
  Eq. (2) (MLP_b(v_i) ⊙ q_i, L2Norm, FC_r) -> one logit r̂_i per region; r_i = sigmoid(r̂_i).
- :func:`fuse_scores`: s_i = r_i × c_i ("Score Fusion").

The region feature v_i (RoI pooling + the detector's conv head, e_v) is the caller's: the module
takes ``(R, v)`` features. As released (``AttVanillaPredictorV2``), v_i is the RoI feature alone,
without box geometry; a caller that wants geometry concatenates it to v_i (and sets
``visual_dim`` accordingly).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ._checks import (
    check_bool_tensor,
    check_float_tensor,
    check_index_tensor,
    check_number,
    check_optional_int,
    check_unit_interval,
)
from .words import WordVectors

__all__ = [
    "UNK",
    "ExpressionEncoder",
    "RelatednessModule",
    "WordLookup",
    "build_vocabulary",
    "fuse_scores",
    "masked_softmax",
]

# The out-of-vocabulary token: index 0 of every WordLookup, a zero vector (released build_vocab).
UNK = "<unk>"


def _check_token_lists(token_lists, name: str = "token_lists") -> list[list[str]]:
    if isinstance(token_lists, (str, bytes)) or not isinstance(token_lists, Iterable):
        raise ValueError(f"{name} must be a list of token lists, got {type(token_lists).__name__}")
    out = []
    for i, tokens in enumerate(token_lists):
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Iterable):
            raise ValueError(
                f"{name}[{i}] must be a list of tokens (str), got {type(tokens).__name__} "
                "(a sentence must be tokenised first)"
            )
        tokens = list(tokens)
        for t in tokens:
            if not isinstance(t, str):
                raise ValueError(f"{name}[{i}] must contain only str, got {t!r}")
        out.append(tokens)
    return out


def build_vocabulary(
    token_lists: Iterable[Sequence[str]], wv: WordVectors, min_count: int = 2
) -> list[str]:
    """The released vocabulary (ref_nms.md §1.2, T7): ``[UNK] + sorted(words)`` over the tokens
    that occur at least ``min_count`` times in ``token_lists`` *and* have a vector in ``wv``.

    The release counts the tokens of all splits, test included (§6 #9); pass the training
    expressions only to avoid that leak.

    Args:
        token_lists: the tokenised expressions (lists of str, e.g. RefCOCO ``sent['tokens']``).
        wv: the word vectors (exact-then-lower-case lookup, :meth:`WordVectors.key`).
        min_count: the paper's "filtering the words less than 2 times" (>= 1).

    Returns:
        list of str, ``UNK`` first.
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
    if not isinstance(wv, WordVectors):
        raise ValueError(f"wv must be a WordVectors, got {type(wv).__name__}")
    counts = Counter(t for tokens in _check_token_lists(token_lists) for t in tokens)
    words = sorted(w for w, n in counts.items() if n >= min_count and w in wv and w != UNK)
    return [UNK] + words


class WordLookup(nn.Module):
    """Frozen word embeddings: a fixed ``(V, E)`` table, row 0 = ``UNK`` = zeros.

    The released model does not learn word embeddings: the data loader looks the words up in the
    fixed GloVe vectors (ref_nms.md §1.2, §4.1 #6), which this reproduces. The table is a
    non-persistent buffer: it follows ``.to()``/``.double()`` but is not part of the state dict,
    so a checkpoint does not depend on the vocabulary (``build_model`` runs without data, §8);
    rebuild the lookup from the same word vectors when loading.

    Tokens are looked up as given, then in lower case; a token outside the vocabulary (or whose
    word has no vector) maps to ``UNK``, a zero vector.

    Args:
        wv: the word vectors (E = ``wv.dim``).
        vocab: the words to keep (e.g. :func:`build_vocabulary`), or None for every word of
            ``wv``. ``UNK`` in it is ignored (it is always row 0); words without a vector in
            ``wv`` map to ``UNK``.
    """

    def __init__(self, wv: WordVectors, vocab: Iterable[str] | None = None):
        super().__init__()
        if not isinstance(wv, WordVectors):
            raise ValueError(f"wv must be a WordVectors, got {type(wv).__name__}")
        if vocab is None:
            words = wv.words
        else:
            if isinstance(vocab, (str, bytes)):
                raise ValueError("vocab must be a list of words, got a str")
            words = list(vocab)
            for w in words:
                if not isinstance(w, str):
                    raise ValueError(f"vocab must contain only str, got {w!r}")
        self.vocab: list[str] = [UNK]
        self._index: dict[str, int] = {}
        rows = [torch.zeros(wv.dim, dtype=torch.float32)]
        for w in words:
            if w == UNK or w in self._index or w not in wv:
                continue
            self.vocab.append(w)
            self._index[w] = len(self.vocab) - 1
            rows.append(wv[w])
        self.register_buffer("weight", torch.stack(rows), persistent=False)

    @property
    def embed_dim(self) -> int:
        """E, the word-vector dimension."""
        return int(self.weight.shape[1])

    def __len__(self) -> int:
        return len(self.vocab)

    def index(self, token: str) -> int:
        """The row of ``token`` (exact, then lower case), 0 (``UNK``) when it is unknown."""
        if not isinstance(token, str):
            raise ValueError(f"token must be a str, got {token!r}")
        return self._index.get(token, self._index.get(token.lower(), 0))

    def forward(
        self, token_lists: Sequence[Sequence[str]], max_length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed a batch of tokenised expressions.

        Args:
            token_lists: B lists of tokens (str); an empty list is an empty expression.
            max_length: truncate each expression to its first ``max_length`` tokens (released
                training: 10 for RefCOCO/RefCOCO+, 20 for RefCOCOg; None at inference).

        Returns:
            embeddings: ``(B, T, E)`` in the table's dtype, T = max(1, longest length); padded
                positions are zero.
            lengths: int64 ``(B,)``, the number of tokens kept per expression (0 for an empty one).
        """
        token_lists = _check_token_lists(token_lists)
        max_length = check_optional_int("max_length", max_length)
        if max_length is not None:
            token_lists = [tokens[:max_length] for tokens in token_lists]
        lengths = torch.tensor([len(t) for t in token_lists], dtype=torch.int64)
        t_max = max([1] + lengths.tolist())
        ids = torch.zeros(len(token_lists), t_max, dtype=torch.int64)
        for i, tokens in enumerate(token_lists):
            if tokens:
                ids[i, : len(tokens)] = torch.tensor([self.index(t) for t in tokens])
        # pads look up row 0, the zero UNK vector
        return self.weight[ids.to(self.weight.device)], lengths.to(self.weight.device)

    def extra_repr(self) -> str:
        return f"vocab={len(self.vocab)}, embed_dim={self.embed_dim}"


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax over the last dimension restricted to ``mask``; a row without any True gets all
    zeros (not NaN), with finite gradients.

    Args:
        scores: float ``(..., T)``.
        mask: bool ``(..., T)``, True for real words.

    Returns:
        float ``(..., T)``: in [0, 1], summing to 1 over the masked-in positions of each row that
        has one, 0 elsewhere.
    """
    has_any = mask.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~mask, float("-inf"))
    # an all-masked row would be softmax(-inf, ..., -inf) = NaN: make it uniform, then zero it
    scores = scores.masked_fill(~has_any, 0.0)
    return torch.softmax(scores, dim=-1) * mask.to(scores.dtype)


def _xavier_zero_(module: nn.Module) -> None:
    """The released initialisation (train_att_vanilla.py L49-60): Xavier-uniform weights (each
    GRU weight matrix as one matrix), zero biases."""
    for p in module.parameters(recurse=False):
        if p.dim() >= 2:
            nn.init.xavier_uniform_(p)
        else:
            nn.init.zeros_(p)


class ExpressionEncoder(nn.Module):
    """e_q of the paper: fixed word embeddings -> Bi-GRU -> word features w_j ∈ R^q, q = 2·hidden.

    Empty expressions (no token, or a sentence whose tokens were all dropped) are defined as
    having *no words*: their mask row is all False and their word features are zero. The
    relatedness module then gives q_i = 0 for their regions (masked attention returns zeros), so
    every region gets the same logit (FC_r's bias), r is constant and the fused score s = r·c
    keeps the order of c: Ref-NMS falls back to plain NMS on the detector's confidence. (The
    release crashes there: ``pack_padded_sequence`` rejects a zero length, ref_nms.md §4.3.)

    Args:
        embed_dim: E, the word-vector dimension (300 for GloVe).
        hidden_size: the GRU hidden size per direction (paper: 256).
        num_layers: GRU layers (released: 1).
        lookup: a :class:`WordLookup` for token-list input, or None (tensor input only: the
            model then builds without a vocabulary).
    """

    @configurable
    def __init__(
        self,
        *,
        embed_dim: int = 300,
        hidden_size: int = 256,
        num_layers: int = 1,
        lookup: WordLookup | None = None,
    ):
        super().__init__()
        for name, v in (("embed_dim", embed_dim), ("hidden_size", hidden_size)):
            check_optional_int(name, v)
            if v is None:
                raise ValueError(f"{name} must be an int >= 1, got None")
        check_optional_int("num_layers", num_layers)
        if lookup is not None:
            if not isinstance(lookup, WordLookup):
                raise ValueError(f"lookup must be a WordLookup or None, got {type(lookup)}")
            if lookup.embed_dim != embed_dim:
                raise ValueError(
                    f"lookup has embed_dim {lookup.embed_dim}, expected embed_dim={embed_dim}"
                )
        self.lookup = lookup
        self.embed_dim = int(embed_dim)
        self.hidden_size = int(hidden_size)
        self.gru = nn.GRU(
            embed_dim, hidden_size, num_layers=num_layers, batch_first=True, bidirectional=True
        )
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg, lookup: WordLookup | None = None):
        c = cfg.MODEL.REF_NMS
        return {
            "embed_dim": c.WORD_EMBED_DIM,
            "hidden_size": c.GRU_HIDDEN_DIM,
            "num_layers": c.GRU_NUM_LAYERS,
            "lookup": lookup,
        }

    def reset_parameters(self) -> None:
        _xavier_zero_(self.gru)

    @property
    def output_dim(self) -> int:
        """q = 2 × hidden_size (forward and backward states concatenated)."""
        return 2 * self.hidden_size

    def forward(
        self,
        expressions: Sequence[Sequence[str]] | torch.Tensor,
        lengths: torch.Tensor | None = None,
        max_length: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a padded batch of B expressions.

        Args:
            expressions: B token lists (needs ``lookup``), or embedded words, float
                ``(B, T, E)`` (padding anywhere after each length; ignored).
            lengths: int ``(B,)`` with values in [0, T]; required with a tensor, unused otherwise.
            max_length: keep only the first ``max_length`` words (released training: 10/20).

        Returns:
            word_features: ``(B, T', q)`` in the GRU's dtype, the Bi-GRU outputs w_j; zero at
                padded positions. T' = max(1, T) (token lists: T = the longest kept length).
            word_mask: bool ``(B, T')``, True at the real words; all False for an empty
                expression.
        """
        max_length = check_optional_int("max_length", max_length)
        if isinstance(expressions, torch.Tensor):
            emb = check_float_tensor("expressions", expressions, ndim=3)
            if emb.shape[2] != self.embed_dim:
                raise ValueError(
                    f"expressions must be (B, T, E={self.embed_dim}), got {tuple(emb.shape)}"
                )
            if lengths is None:
                raise ValueError("lengths is required with embedded expressions (B, T, E)")
            lengths = check_index_tensor("lengths", lengths, emb.shape[0])
            if lengths.numel() and int(lengths.max()) > emb.shape[1]:
                raise ValueError(f"lengths must be <= T = {emb.shape[1]}, got {int(lengths.max())}")
            if max_length is not None:
                lengths = lengths.clamp(max=max_length)
        else:
            if self.lookup is None:
                raise ValueError(
                    "expressions are token lists but this ExpressionEncoder has no lookup: "
                    "pass a WordLookup or embedded words (B, T, E) and lengths"
                )
            emb, lengths = self.lookup(expressions, max_length=max_length)
        weight = self.gru.weight_ih_l0
        emb = emb.to(device=weight.device, dtype=weight.dtype)
        b, t = emb.shape[0], max(1, emb.shape[1])
        if emb.shape[1] == 0:
            emb = emb.new_zeros(b, 1, self.embed_dim)
        mask = torch.arange(t, device=emb.device)[None, :] < lengths.to(emb.device)[:, None]
        out = emb.new_zeros(b, t, self.output_dim)
        nonempty = (lengths > 0).nonzero().flatten().to(emb.device)
        if nonempty.numel():
            packed = pack_padded_sequence(
                emb[nonempty],
                lengths[nonempty.cpu()].cpu(),
                batch_first=True,
                enforce_sorted=False,
            )
            features, _ = self.gru(packed)
            features, _ = pad_packed_sequence(features, batch_first=True, total_length=t)
            out = out.index_copy(0, nonempty, features)
        return out, mask


class RelatednessModule(nn.Module):
    """Eqs. (1)-(2): the relatedness logit r̂_i of each region to its expression.

    Eq. (1): v^a_i = MLP_a(v_i); a_ij = FC_s([v^a_i; w_j]); α_ij = softmax_j(a_ij) over the real
    words; q_i = Σ_j α_ij w_j.
    Eq. (2): v^b_i = MLP_b(v_i); m_i = L2Norm(v^b_i ⊙ q_i); r̂_i = FC_r(m_i); r_i = sigmoid(r̂_i)
    (the sigmoid is left to the loss / the caller, as released).

    MLP_a and MLP_b are Linear(v, hidden) → ReLU → Linear(hidden, q). Released additions, on by
    default and switchable (ref_nms.md §1.3, §4.1 #5, §6 #7): dropout on the concatenation
    [v^a_i; w_j] before FC_s, a ReLU before the L2Norm (m_i = L2Norm(ReLU(v^b_i ⊙ q_i))), and
    dropout on m_i before FC_r. Initialisation as released: Xavier-uniform weights, zero biases.

    Note on Eq. (1): FC_s is linear, so a_ij = u·v^a_i + u'·w_j + b, and the region term u·v^a_i
    is constant over j and cancels in the softmax. Without dropout (eval mode) α_ij and q_i are
    therefore the same for every region of an expression; the region-expression interaction is
    the product v^b_i ⊙ q_i of Eq. (2). This holds for the paper's equations and the release
    alike; the module implements them as written.

    Args:
        visual_dim: v, the dimension of the region features v_i (released: 2048).
        word_dim: q, the dimension of the word features (2 × GRU hidden; released: 512).
        hidden_dim: the hidden width of MLP_a and MLP_b (released: 1024).
        attention_dropout: dropout probability on [v^a_i; w_j] (released 0.5; paper: none).
        fusion_dropout: dropout probability on m_i (released 0.5; paper: none).
        relu_before_norm: m_i = L2Norm(ReLU(v^b ⊙ q)) (released, True) or L2Norm(v^b ⊙ q)
            (paper, False).
    """

    @configurable
    def __init__(
        self,
        *,
        visual_dim: int,
        word_dim: int = 512,
        hidden_dim: int = 1024,
        attention_dropout: float = 0.5,
        fusion_dropout: float = 0.5,
        relu_before_norm: bool = True,
    ):
        super().__init__()
        for name, v in (("visual_dim", visual_dim), ("word_dim", word_dim)):
            if check_optional_int(name, v) is None:
                raise ValueError(f"{name} must be an int >= 1, got None")
        if check_optional_int("hidden_dim", hidden_dim) is None:
            raise ValueError("hidden_dim must be an int >= 1, got None")
        check_number("attention_dropout", attention_dropout, 0.0, 1.0, hi_open=True)
        check_number("fusion_dropout", fusion_dropout, 0.0, 1.0, hi_open=True)
        self.visual_dim = int(visual_dim)
        self.word_dim = int(word_dim)
        self.relu_before_norm = bool(relu_before_norm)
        # Eq. (1): MLP_a, R^v -> R^q (attention key), and FC_s on [v^a_i; w_j]
        self.mlp_a = nn.Sequential(
            nn.Linear(visual_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, word_dim)
        )
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.fc_s = nn.Linear(2 * word_dim, 1)
        # Eq. (2): MLP_b, R^v -> R^q, and FC_r, R^q -> R
        self.mlp_b = nn.Sequential(
            nn.Linear(visual_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, word_dim)
        )
        self.fusion_dropout = nn.Dropout(fusion_dropout)
        self.fc_r = nn.Linear(word_dim, 1)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg, visual_dim: int):
        c = cfg.MODEL.REF_NMS
        return {
            "visual_dim": visual_dim,
            "word_dim": 2 * c.GRU_HIDDEN_DIM,
            "hidden_dim": c.MLP_HIDDEN_DIM,
            "attention_dropout": c.ATTENTION_DROPOUT,
            "fusion_dropout": c.FUSION_DROPOUT,
            "relu_before_norm": c.RELU_BEFORE_NORM,
        }

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _xavier_zero_(m)

    def _words_per_region(
        self,
        r: int,
        word_features: torch.Tensor,
        word_mask: torch.Tensor,
        expr_index: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_float_tensor("word_features", word_features, ndim=3)
        b, t, q = word_features.shape
        if q != self.word_dim:
            raise ValueError(
                f"word_features must be (B, T, q={self.word_dim}), got {tuple(word_features.shape)}"
            )
        check_bool_tensor("word_mask", word_mask, (b, t))
        if expr_index is None:
            if b == r:
                return word_features, word_mask
            if b == 1:
                return word_features.expand(r, t, q), word_mask.expand(r, t)
            raise ValueError(
                f"word_features has {b} expressions for {r} regions: pass expr_index (R,), or one "
                "expression (B = 1) or one per region (B = R)"
            )
        expr_index = check_index_tensor("expr_index", expr_index, r)
        if r and int(expr_index.max()) >= b:
            raise ValueError(
                f"expr_index must be < B = {b} (the number of expressions), got "
                f"{int(expr_index.max())}"
            )
        expr_index = expr_index.to(word_features.device)
        return word_features[expr_index], word_mask[expr_index]

    def attend(
        self, key: torch.Tensor, words: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. (1) from the attention key v^a: α ``(R, T)`` and q ``(R, q)``.

        Args:
            key: v^a_i = MLP_a(v_i), float ``(R, q)``.
            words: the word features of each region's expression, ``(R, T, q)``.
            mask: bool ``(R, T)``, True at real words.
        """
        t = words.shape[1]
        pairs = torch.cat([key[:, None, :].expand(-1, t, -1), words], dim=2)  # [v^a_i; w_j]
        scores = self.fc_s(self.attention_dropout(pairs)).squeeze(2)  # a_ij
        alpha = masked_softmax(scores, mask)  # α_ij = softmax_j(a_ij)
        return alpha, (alpha[:, :, None] * words).sum(dim=1)  # q_i = Σ_j α_ij w_j

    def forward(
        self,
        region_features: torch.Tensor,
        word_features: torch.Tensor,
        word_mask: torch.Tensor,
        expr_index: torch.Tensor | None = None,
        return_attention: bool = False,
    ):
        """Relatedness logits of R regions.

        Args:
            region_features: v_i, float ``(R, v)``, finite.
            word_features: w_j of B expressions, float ``(B, T, q)`` (:class:`ExpressionEncoder`),
                same dtype as ``region_features``.
            word_mask: bool ``(B, T)``, True at real words.
            expr_index: int64 ``(R,)`` in [0, B): the expression of each region. If None,
                B must be R (one expression per region) or 1 (all regions, one expression).
            return_attention: also return α.

        Returns:
            logits r̂: float ``(R,)``, unbounded; r = sigmoid(r̂) in (0, 1). With
            ``return_attention``: ``(logits, alpha)``, alpha ``(R, T)`` in [0, 1], each row
            summing to 1 over its expression's words (all zeros for an empty expression).
        """
        check_float_tensor("region_features", region_features, ndim=2)
        r = region_features.shape[0]
        if region_features.shape[1] != self.visual_dim:
            raise ValueError(
                f"region_features must be (R, v={self.visual_dim}), got "
                f"{tuple(region_features.shape)}"
            )
        dtype = self.fc_r.weight.dtype
        for name, x in (("region_features", region_features), ("word_features", word_features)):
            if isinstance(x, torch.Tensor) and x.dtype != dtype:
                raise ValueError(f"{name} has dtype {x.dtype}, the module's parameters {dtype}")
        words, mask = self._words_per_region(r, word_features, word_mask, expr_index)
        # Eq. (1)
        alpha, q = self.attend(self.mlp_a(region_features), words, mask)
        # Eq. (2)
        m = self.mlp_b(region_features) * q  # v^b_i ⊙ q_i
        if self.relu_before_norm:
            m = F.relu(m)  # released code only
        m = F.normalize(m, p=2.0, dim=1)  # L2Norm; a zero vector stays zero
        logits = self.fc_r(self.fusion_dropout(m)).squeeze(1)  # r̂_i = FC_r(m_i)
        if return_attention:
            return logits, alpha
        return logits


def fuse_scores(relatedness: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """Score fusion: s_i = r_i × c_i, the score NMS sorts by (paper, "Score Fusion").

    Args:
        relatedness: r, float tensor, values in [0, 1] (sigmoid of the logits).
        confidence: c, float tensor of the same shape, values in [0, 1] (the detector's class
            probability of each candidate).

    Returns:
        float tensor of that shape, values in [0, 1].
    """
    check_unit_interval("relatedness", relatedness)
    check_unit_interval("confidence", confidence)
    if relatedness.shape != confidence.shape:
        raise ValueError(
            f"relatedness {tuple(relatedness.shape)} and confidence {tuple(confidence.shape)} "
            "must have the same shape"
        )
    return relatedness * confidence
