"""Write ``synth_referring_vectors.txt``: word vectors with designed cosines for the synthetic
referring vocabulary, in GloVe text format (``word v1 ... v40`` per line).

No usable GloVe installs on these machines (ref_nms.md §5.3), and real GloVe puts every shape
word above γ = 0.4 of every other, so the synthetic data uses this table, whose cosines are set
by construction, with γ = 0.4 (paper) in mind:

- synonyms of one category (circle/ring/disc, square/box/block, triangle/wedge/pyramid): cosine
  0.80 with each other (the category name is one of the synonyms);
- words of two different categories: cosine 0.05;
- every other word (colours, sizes, relation and function words, the generic nouns thing/object/
  one): |cosine| <= 0.15 with every category word, and |cosine| <= 0.0225 with every other
  non-category word, so that the expression encoder, which reads these vectors as fixed
  embeddings (ref_nms.md §6 #8), can tell "left" from "right" and "red" from "blue".

Construction, in an orthonormal basis e0..e39 of R^40 (40 = 13 axes for the shape words + one
axis per each of the 27 other words; 16 dimensions cannot hold 27 nearly orthogonal words):

- category c in {0, 1, 2} has the axis e_c; its k-th synonym has its own axis e_{3+3c+k}; e12 is a
  shared "shape" axis. A synonym is  sqrt(0.75) e_c + sqrt(0.05) e12 + sqrt(0.20) e_{3+3c+k}  (unit
  norm): two synonyms of c share e_c and e12 -> 0.75 + 0.05 = 0.80; synonyms of two categories
  share only e12 -> 0.05.
- the i-th non-category word is  sqrt(1 - ε²) e_{13+i} + ε n_i  with ε = 0.15 and n_i a random unit
  vector in span(e0..e12): its cosine with a (unit) category word v is ε (n_i·v), so |cos| <= ε;
  with another non-category word it is ε² (n_i·n_j), so |cos| <= ε².

Then every vector is scaled by a random norm in [0.5, 2] (cosines do not depend on it) and all are
turned by one random rotation of R^40 (QR of a Gaussian matrix), so that no coordinate is
special; values are written with 6 decimals (cosines move by < 1e-5). All randomness comes from
``numpy.random.RandomState(seed)``; the shipped file is ``seed = 0``. The script checks the
cosine design on the written values before writing.

Usage: ``python ref_nms/data/make_synth_vectors.py [--out PATH] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

DIM = 13 + 27  # shape axes + one axis per non-category word
EPSILON = 0.15  # bound on |cos| between a non-category word and a category word
SYNONYM_COS = 0.80  # cosine between two synonyms of one category
CROSS_COS = 0.05  # cosine between words of two categories

# The synthetic referring vocabulary (the dataset generator uses exactly these words).
CATEGORY_SYNONYMS = {
    "circle": ("circle", "ring", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge", "pyramid"),
}
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("big", "large", "small", "little")
RELATION_WORDS = (
    "left",
    "right",
    "above",
    "below",
    "next",
    "to",
    "of",
    "the",
    "leftmost",
    "rightmost",
    "first",
    "second",
    "third",
    "from",
)
GENERIC_NOUNS = ("thing", "object", "one")
OTHER_WORDS = COLOURS + SIZES + RELATION_WORDS + GENERIC_NOUNS

DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "synth_referring_vectors.txt"
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def build_table(seed: int = 0) -> dict[str, np.ndarray]:
    """The word -> vector (float64, shape [DIM]) table before rounding (module docstring)."""
    rs = np.random.RandomState(seed)
    eye = np.eye(DIM)
    shared = eye[12]
    a = np.sqrt(SYNONYM_COS - CROSS_COS)  # weight of the category axis: a² = 0.75
    s = np.sqrt(CROSS_COS)  # weight of the shared shape axis: s² = 0.05
    b = np.sqrt(1.0 - a * a - s * s)  # weight of the synonym's own axis: b² = 0.20
    table: dict[str, np.ndarray] = {}
    for c, synonyms in enumerate(CATEGORY_SYNONYMS.values()):
        for k, word in enumerate(synonyms):
            table[word] = a * eye[c] + s * shared + b * eye[3 + 3 * c + k]
    assert DIM == 13 + len(OTHER_WORDS)
    for i, word in enumerate(OTHER_WORDS):
        n = np.zeros(DIM)
        n[:13] = _unit(rs.randn(13))
        table[word] = np.sqrt(1.0 - EPSILON**2) * eye[13 + i] + EPSILON * n
    q, rr = np.linalg.qr(rs.randn(DIM, DIM))
    q = q * np.sign(np.diag(rr))[None, :]  # a proper random orthogonal matrix
    for word in table:
        table[word] = q @ table[word] * rs.uniform(0.5, 2.0)
    return table


def format_table(table: dict[str, np.ndarray]) -> str:
    """GloVe text: ``word v1 ... vD`` per line, 6 decimals."""
    lines = []
    for word, vec in table.items():
        lines.append(word + " " + " ".join(f"{v + 0.0:.6f}" for v in np.round(vec, 6)))
    return "\n".join(lines) + "\n"


def parse_table(text: str) -> dict[str, np.ndarray]:
    """Inverse of :func:`format_table` (single-token words only)."""
    out = {}
    for line in text.splitlines():
        word, *values = line.split(" ")
        out[word] = np.array([float(v) for v in values])
    return out


def check_design(table: dict[str, np.ndarray], tol: float = 1e-4) -> None:
    """Raise AssertionError unless the cosines are as designed (module docstring)."""

    def cos(u, v):
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    expected = set(OTHER_WORDS).union(*CATEGORY_SYNONYMS.values())
    assert set(table) == expected, sorted(set(table) ^ expected)
    cats = {w: c for c, ws in CATEGORY_SYNONYMS.items() for w in ws}
    for u in cats:
        for v in cats:
            if u == v:
                continue
            want = SYNONYM_COS if cats[u] == cats[v] else CROSS_COS
            got = cos(table[u], table[v])
            assert abs(got - want) < tol, (u, v, got, want)
        for w in OTHER_WORDS:
            got = cos(table[u], table[w])
            assert abs(got) <= EPSILON + tol, (u, w, got)
    for u in OTHER_WORDS:
        for w in OTHER_WORDS:
            if u != w:
                got = cos(table[u], table[w])
                assert abs(got) <= EPSILON**2 + tol, (u, w, got)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="output GloVe text file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    text = format_table(build_table(args.seed))
    check_design(parse_table(text))
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {len(text.splitlines())} words x {DIM} to {args.out}")


if __name__ == "__main__":
    main()
