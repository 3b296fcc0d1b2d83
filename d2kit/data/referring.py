"""A deterministic synthetic referring-expression dataset in RefCOCO's ``refer`` layout.

Each 128x128 scene holds 3-6 filled shapes (``circle``, ``square``, ``triangle``; category ids
1, 2, 3), usually two or three of one class, in six colours and two clearly distinct sizes
(big: side 28-34 px, small: 12-16 px), never overlapping. Expressions are generated from the
scene graph for chosen referents and always name their referent uniquely under
:func:`resolve_referring_expression`:

* attributes: "the red circle", "the big box", "the small yellow one";
* horizontal order: "the leftmost disc", "the left wedge" (of two), "the second ring from the left";
* relations to one context object: "the circle next to the blue square",
  "the triangle to the left of the green ring", "the block above the yellow disc".

Words come from a closed vocabulary (:data:`REFERRING_VOCABULARY`) with synonyms per class
(:data:`REFERRING_SYNONYMS`), so that word similarity matters. Each ref records its referent
(``ann_id``) and every context object its sentences mention (``context_ann_ids``, also per
sentence).

Files (the layout :func:`d2kit.data.register_refcoco` reads, ``dataset="synth_referring"``)::

    <root>/synth_referring/refs(unc).p       protocol-2 pickle of the refs (Python 2 readable)
    <root>/synth_referring/instances.json    COCO json; annotations also carry "colour", "size"
    <root>/images/mscoco/images/train2014/synth_referring_<image_id>.png

Splits, unc style, by image: images ``[0, num_train)`` are train, the next ``num_val`` val,
the next ``num_testA`` testA, the last ``num_testB`` testB. Mirroring RefCOCO's people (testA) /
objects (testB) split, **every ref of a testA image refers to a circle and every ref of a testB
image to a square or triangle**; train and val refer to any class.

The dataset is generated lazily by :func:`ensure_synth_referring` under ``datasets_root()`` and
regenerated when :data:`SYNTH_REFERRING_SPEC` or :data:`GENERATOR_VERSION` changes. The same
spec gives the same files byte for byte.
"""

from __future__ import annotations

import dataclasses
import fcntl
import glob
import json
import logging
import math
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass

import cv2
import numpy as np

from ..paths import datasets_root
from .refcoco import REFER_IMAGE_DIR

__all__ = [
    "REFERRING_CLASSES",
    "REFERRING_SYNONYMS",
    "REFERRING_COLOURS",
    "REFERRING_SIZE_WORDS",
    "REFERRING_GENERIC_NOUNS",
    "REFERRING_RELATION_WORDS",
    "REFERRING_VOCABULARY",
    "REFERRING_SPLITS",
    "SYNTH_REFERRING_DATASET",
    "SYNTH_REFERRING_SPEC",
    "ReferringSpec",
    "ReferringDescription",
    "ReferringExpression",
    "parse_referring_expression",
    "evaluate_referring_expression",
    "resolve_referring_expression",
    "render_referring_expression",
    "generate_referring_scene",
    "write_referring_dataset",
    "ensure_synth_referring",
]

logger = logging.getLogger(__name__)

#: Bump when the scenes or the expressions change, so that stale caches are regenerated.
GENERATOR_VERSION = 1

# ---- vocabulary (the word-vector helper ships vectors for exactly these words) ----------------

#: Category names; category id = index + 1.
REFERRING_CLASSES = ("circle", "square", "triangle")
#: Nouns used for each category (the category name first).
REFERRING_SYNONYMS = {
    "circle": ("circle", "ring", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge", "pyramid"),
}
#: Colour names and the RGB they are drawn with (jittered by up to 12 per channel).
REFERRING_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
#: Size attribute -> its words.
REFERRING_SIZE_WORDS = {"big": ("big", "large"), "small": ("small", "little")}
#: Nouns that name no category ("the red one").
REFERRING_GENERIC_NOUNS = ("thing", "object", "one")
#: Function and location words.
REFERRING_RELATION_WORDS = (
    "left", "right", "above", "below", "next", "to", "of", "the",
    "leftmost", "rightmost", "first", "second", "third", "from",
)  # fmt: skip
#: Every token a synthetic expression can contain, sorted.
REFERRING_VOCABULARY = tuple(
    sorted(
        {w for words in REFERRING_SYNONYMS.values() for w in words}
        | set(REFERRING_COLOURS)
        | {w for words in REFERRING_SIZE_WORDS.values() for w in words}
        | set(REFERRING_GENERIC_NOUNS)
        | set(REFERRING_RELATION_WORDS)
    )
)
REFERRING_SPLITS = ("train", "val", "testA", "testB")
SYNTH_REFERRING_DATASET = "synth_referring"

_NOUN_TO_CLASS = {w: c for c, words in REFERRING_SYNONYMS.items() for w in words}
_SIZE_TO_ATTR = {w: s for s, words in REFERRING_SIZE_WORDS.items() for w in words}
_ORDINALS = ("first", "second", "third")
_RELATIONS = ("left", "right", "above", "below", "next")

# ---- the rule that decides what an expression refers to (all in pixels) ----------------------
#: Two centres closer than this in x have no clear left/right order.
ORDINAL_MARGIN = 10.0
#: "A left of B" holds when B.cx - A.cx >= RELATION_MIN_OFFSET and |dy| <= RELATION_CONE * dx;
#: it clearly fails when dx <= RELATION_FALSE_OFFSET or |dy| >= 2 dx; otherwise it is unclear.
#: (Same for right/above/below with the axes swapped or mirrored.)
RELATION_MIN_OFFSET = 8.0
RELATION_CONE = 0.75
RELATION_FALSE_OFFSET = 4.0
#: "A next to B" holds when the gap between their boxes is <= NEXT_TO_MAX_GAP, clearly fails at
#: >= NEXT_TO_FAR_GAP, and is unclear in between.
NEXT_TO_MAX_GAP = 10.0
NEXT_TO_FAR_GAP = 24.0


@dataclass(frozen=True)
class ReferringSpec:
    """Sizes and randomness of the synthetic referring dataset (pixels where a size)."""

    num_train: int = 400
    num_val: int = 60
    num_testA: int = 60
    num_testB: int = 60
    seed: int = 5000
    image_size: int = 128
    min_objects: int = 3
    max_objects: int = 6
    max_refs_per_image: int = 3
    min_sentences: int = 2
    max_sentences: int = 3
    big_size: tuple = (28.0, 34.0)  # side range of "big" objects (before a <= 0.2 rad rotation)
    small_size: tuple = (12.0, 16.0)  # side range of "small" objects

    def split_of(self, index: int) -> str:
        """The split of image ``index`` (0-based)."""
        bound = 0
        for split in REFERRING_SPLITS:
            bound += self.split_sizes()[split]
            if index < bound:
                return split
        raise IndexError(f"image index {index} >= {self.num_images} images")

    def split_sizes(self) -> dict[str, int]:
        return dict(train=self.num_train, val=self.num_val, testA=self.num_testA,
                    testB=self.num_testB)  # fmt: skip

    @property
    def num_images(self) -> int:
        return sum(self.split_sizes().values())


#: The registered ``synth_referring_*`` datasets use this spec.
SYNTH_REFERRING_SPEC = ReferringSpec()


# ---- expressions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferringDescription:
    """A noun phrase; ``category`` None for a generic noun (thing/object/one)."""

    category: str | None
    colour: str | None = None
    size: str | None = None  # "big" or "small"

    def matches(self, obj: dict) -> bool:
        return (
            (self.category is None or obj["category"] == self.category)
            and (self.colour is None or obj["colour"] == self.colour)
            and (self.size is None or obj["size"] == self.size)
        )


@dataclass(frozen=True)
class ReferringExpression:
    """The meaning of one sentence.

    ``form``: ``attribute`` ("the red circle"), ``extreme`` ("the leftmost circle"), ``side``
    ("the left circle", of exactly two), ``ordinal`` ("the second circle from the right") or
    ``relation`` ("the circle above the red box"). ``side`` is "left"/"right" for the order forms;
    ``ordinal`` 1-3; ``relation`` one of left/right/above/below/next with ``context``.
    """

    form: str
    target: ReferringDescription
    side: str | None = None
    ordinal: int | None = None
    relation: str | None = None
    context: ReferringDescription | None = None


def _parse_np(tokens: list[str], pos: int, sentence: str) -> tuple[ReferringDescription, int]:
    size = colour = None
    if pos < len(tokens) and tokens[pos] in _SIZE_TO_ATTR:
        size = _SIZE_TO_ATTR[tokens[pos]]
        pos += 1
    if pos < len(tokens) and tokens[pos] in REFERRING_COLOURS:
        colour = tokens[pos]
        pos += 1
    if pos >= len(tokens):
        raise ValueError(f"{sentence!r}: expected a noun at the end")
    noun = tokens[pos]
    if noun in _NOUN_TO_CLASS:
        category = _NOUN_TO_CLASS[noun]
    elif noun in REFERRING_GENERIC_NOUNS:
        category = None
    else:
        raise ValueError(f"{sentence!r}: expected a noun at word {pos + 1}, got {noun!r}")
    return ReferringDescription(category, colour, size), pos + 1


def _expect(tokens: list[str], pos: int, words: tuple[str, ...], sentence: str) -> int:
    if tuple(tokens[pos : pos + len(words)]) != words:
        raise ValueError(f"{sentence!r}: expected {' '.join(words)!r} at word {pos + 1}")
    return pos + len(words)


def parse_referring_expression(sentence: str | list[str]) -> ReferringExpression:
    """Parse a sentence of the synthetic grammar (tokens or a whitespace-separated string).

    Grammar (``NP := [size] [colour] noun``)::

        the NP                                 attribute
        the leftmost|rightmost NP              extreme
        the left|right NP                      side
        the first|second|third NP from the left|right
        the NP (left of|to the left of|right of|to the right of|above|below|next to) the NP

    Raises:
        ValueError: naming the sentence and the word where it stops following the grammar.
    """
    tokens = sentence.split() if isinstance(sentence, str) else list(sentence)
    text = " ".join(tokens)
    pos = _expect(tokens, 0, ("the",), text)
    word = tokens[pos] if pos < len(tokens) else None
    side = ordinal = relation = context = None
    if word in ("leftmost", "rightmost"):
        form, side = "extreme", word[: -len("most")]
        target, pos = _parse_np(tokens, pos + 1, text)
    elif word in ("left", "right"):
        form, side = "side", word
        target, pos = _parse_np(tokens, pos + 1, text)
    elif word in _ORDINALS:
        form, ordinal = "ordinal", _ORDINALS.index(word) + 1
        target, pos = _parse_np(tokens, pos + 1, text)
        pos = _expect(tokens, pos, ("from", "the"), text)
        side = tokens[pos] if pos < len(tokens) else None
        if side not in ("left", "right"):
            raise ValueError(f"{text!r}: expected 'left' or 'right' at word {pos + 1}")
        pos += 1
    else:
        target, pos = _parse_np(tokens, pos, text)
        form = "attribute"
        if pos < len(tokens):
            form = "relation"
            rest = tuple(tokens[pos:])
            for words, rel in ((("to", "the", "left", "of"), "left"), (("left", "of"), "left"),
                               (("to", "the", "right", "of"), "right"), (("right", "of"), "right"),
                               (("above",), "above"), (("below",), "below"),
                               (("next", "to"), "next")):  # fmt: skip
                if rest[: len(words)] == words:
                    relation, pos = rel, pos + len(words)
                    break
            else:
                raise ValueError(f"{text!r}: expected a relation at word {pos + 1}")
            pos = _expect(tokens, pos, ("the",), text)
            context, pos = _parse_np(tokens, pos, text)
    if pos != len(tokens):
        raise ValueError(f"{text!r}: unexpected words after word {pos}")
    return ReferringExpression(form, target, side, ordinal, relation, context)


def _centre(obj: dict) -> tuple[float, float]:
    x0, y0, x1, y1 = obj["bbox"]
    return (x0 + x1) / 2, (y0 + y1) / 2


def _relation_holds(relation: str, obj: dict, ctx: dict) -> bool | None:
    """Whether ``obj`` is <relation> ``ctx``: True, False, or None when unclear."""
    if relation == "next":
        ax0, ay0, ax1, ay1 = obj["bbox"]
        bx0, by0, bx1, by1 = ctx["bbox"]
        gx = max(bx0 - ax1, ax0 - bx1, 0.0)
        gy = max(by0 - ay1, ay0 - by1, 0.0)
        gap = math.hypot(gx, gy)
        return True if gap <= NEXT_TO_MAX_GAP else False if gap >= NEXT_TO_FAR_GAP else None
    (ox, oy), (cx, cy) = _centre(obj), _centre(ctx)
    # along: how far obj is in the named direction from ctx; across: the offset across it
    along, across = {
        "left": (cx - ox, oy - cy),
        "right": (ox - cx, oy - cy),
        "above": (cy - oy, ox - cx),
        "below": (oy - cy, ox - cx),
    }[relation]
    if along >= RELATION_MIN_OFFSET and abs(across) <= RELATION_CONE * along:
        return True
    if along <= RELATION_FALSE_OFFSET or abs(across) >= 2 * along:
        return False
    return None


def evaluate_referring_expression(expr: ReferringExpression, objects: list[dict]) -> list:
    """Which objects ``expr`` could refer to.

    Args:
        objects: dicts with ``category`` (a name of REFERRING_CLASSES), ``colour``, ``size``
            ("big"/"small") and ``bbox`` [x0, y0, x1, y1] (pixels).

    Returns:
        one value per object: True (it is referred to), False (it is clearly not), None (unclear:
        positions too close to call, or an ambiguous context).
    """
    values: list = [False] * len(objects)
    cand = [i for i, o in enumerate(objects) if expr.target.matches(o)]
    if expr.form == "attribute":
        for i in cand:
            values[i] = True
    elif expr.form in ("extreme", "side", "ordinal"):
        if expr.form == "side" and len(cand) != 2:
            for i in cand:  # "the left circle" needs exactly two circles
                values[i] = None
            return values
        rank = (expr.ordinal or 1) - 1
        sign = 1.0 if expr.side == "left" else -1.0
        key = {i: sign * _centre(objects[i])[0] for i in cand}
        for i in cand:
            # how many candidates are surely / possibly before i
            sure = sum(key[j] < key[i] - ORDINAL_MARGIN for j in cand if j != i)
            maybe = sum(key[j] < key[i] + ORDINAL_MARGIN for j in cand if j != i)
            if sure <= rank <= maybe:
                values[i] = True if sure == maybe else None
    elif expr.form == "relation":
        ctx = [j for j, o in enumerate(objects) if expr.context.matches(o)]
        for i in cand:
            if len(ctx) == 1:
                values[i] = ctx[0] != i and _relation_holds(expr.relation, objects[i],
                                                            objects[ctx[0]])  # fmt: skip
            elif ctx:
                values[i] = None  # "the blue square" names several objects
    else:
        raise ValueError(f"unknown expression form {expr.form!r}")
    return values


def resolve_referring_expression(sentence: str | list[str], objects: list[dict]) -> int | None:
    """The index of the one object ``sentence`` refers to, or None if it is not unique.

    Unique means: that object evaluates True and every other object clearly False (see
    :func:`evaluate_referring_expression` and the module's margins).
    """
    values = evaluate_referring_expression(parse_referring_expression(sentence), objects)
    true = [i for i, v in enumerate(values) if v is True]
    if len(true) == 1 and all(v is False for i, v in enumerate(values) if i != true[0]):
        return true[0]
    return None


def _unique(values: list, index: int) -> bool:
    return values[index] is True and all(v is False for i, v in enumerate(values) if i != index)


def _descriptions(obj: dict, bare: bool) -> list[ReferringDescription]:
    """Every description of ``obj`` (class or generic noun, with/without colour and size)."""
    out = []
    for category in (obj["category"], None):
        for colour in (obj["colour"], None):
            for size in (obj["size"], None):
                if bare or category or colour or size:
                    out.append(ReferringDescription(category, colour, size))
    return out


def _valid_expressions(objects: list[dict], t: int, ctx_descs: dict) -> dict[str, list]:
    """Expressions that name object ``t`` uniquely, by group (attribute / order / relation).

    ``ctx_descs[c]``: the descriptions that name object c uniquely (usable as a context).
    """
    groups: dict[str, list] = {"attribute": [], "order": [], "relation": []}
    obj = objects[t]
    for desc in _descriptions(obj, bare=True):
        exprs = []
        if desc.category or desc.colour or desc.size:
            exprs.append(ReferringExpression("attribute", desc))
        n = sum(desc.matches(o) for o in objects)
        for side in ("left", "right"):
            if n >= 2:
                exprs.append(ReferringExpression("extreme", desc, side=side))
            if n == 2:
                exprs.append(ReferringExpression("side", desc, side=side))
            for k in (1, 2, 3):
                if n >= k + 1:
                    exprs.append(ReferringExpression("ordinal", desc, side=side, ordinal=k))
        for expr in exprs:
            if _unique(evaluate_referring_expression(expr, objects), t):
                groups["attribute" if expr.form == "attribute" else "order"].append(expr)
    for c, descs in ctx_descs.items():
        if c == t or not descs:
            continue
        for relation in _RELATIONS:
            if _relation_holds(relation, obj, objects[c]) is not True:
                continue
            for desc in _descriptions(obj, bare=True):
                expr = ReferringExpression("relation", desc, relation=relation, context=descs[0])
                if _unique(evaluate_referring_expression(expr, objects), t):
                    groups["relation"].extend(dataclasses.replace(expr, context=d) for d in descs)
    return groups


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _render_np(rng: np.random.Generator, desc: ReferringDescription) -> list[str]:
    words = []
    if desc.size:
        words.append(_pick(rng, REFERRING_SIZE_WORDS[desc.size]))
    if desc.colour:
        words.append(desc.colour)
    if desc.category:
        words.append(_pick(rng, REFERRING_SYNONYMS[desc.category]))
    else:
        words.append(_pick(rng, REFERRING_GENERIC_NOUNS))
    return words


def render_referring_expression(rng: np.random.Generator, expr: ReferringExpression) -> list[str]:
    """Tokens of one wording of ``expr`` (synonyms and relation phrasings drawn from ``rng``)."""
    target = _render_np(rng, expr.target)
    if expr.form == "attribute":
        return ["the", *target]
    if expr.form == "extreme":
        return ["the", expr.side + "most", *target]
    if expr.form == "side":
        return ["the", expr.side, *target]
    if expr.form == "ordinal":
        return ["the", _ORDINALS[expr.ordinal - 1], *target, "from", "the", expr.side]
    if expr.relation in ("left", "right"):
        rel = _pick(rng, ([expr.relation, "of"], ["to", "the", expr.relation, "of"]))
    else:
        rel = {"above": ["above"], "below": ["below"], "next": ["next", "to"]}[expr.relation]
    return ["the", *target, *rel, "the", *_render_np(rng, expr.context)]


# ---- scenes -----------------------------------------------------------------------------------


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A low-saturation grey gradient with mild noise (so that the colours stay nameable)."""
    base = rng.uniform(95, 165) + rng.uniform(-10, 10, size=3)
    other = base + rng.uniform(-30, 30)
    t = np.linspace(0.0, 1.0, size)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = math.cos(angle) * t[None, :] + math.sin(angle) * t[:, None]
    ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-6)
    img = base[None, None, :] * (1 - ramp[..., None]) + other[None, None, :] * ramp[..., None]
    img += rng.normal(0, 5, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _outline(category: str, cx: float, cy: float, side: float, angle: float) -> np.ndarray:
    """Vertices (V, 2) float64 of a shape whose unrotated box has side ``side``."""
    r = side / 2
    if category == "circle":
        theta = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        return np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], 1)
    if category == "square":
        pts = np.array([[-r, -r], [r, -r], [r, r], [-r, r]])
    else:  # an upright isosceles triangle filling its box
        pts = np.array([[0.0, -r], [r, r], [-r, r]])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return pts @ rot.T + np.array([cx, cy])


def _scene_objects(rng: np.random.Generator, spec: ReferringSpec, split: str) -> list[dict]:
    """Place the shapes of one scene: category, colour, size, polygon, bbox, area."""
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    if split == "testA":
        dominant = "circle"
    elif split == "testB":
        dominant = _pick(rng, ("square", "triangle"))
    else:
        dominant = _pick(rng, REFERRING_CLASSES)
    # two or three of one class, so that the class alone rarely names the referent
    n_dom = int(rng.integers(2, min(3, n) + 1))
    categories = [dominant] * n_dom + [_pick(rng, REFERRING_CLASSES) for _ in range(n - n_dom)]
    colours = [_pick(rng, tuple(REFERRING_COLOURS)) for _ in range(n)]
    if rng.random() < 0.5:  # same-coloured look-alikes: only size or position tells them apart
        colours[:n_dom] = [colours[0]] * n_dom
    sizes = [_pick(rng, ("big", "small")) for _ in range(n)]
    order = rng.permutation(n)
    objects: list[dict] = []
    boxes: list[np.ndarray] = []
    s = spec.image_size
    for k in order:
        for size in (sizes[k], "small"):  # a big one that does not fit becomes small
            lo, hi = spec.big_size if size == "big" else spec.small_size
            placed = False
            for _ in range(60):
                side = rng.uniform(lo, hi)
                angle = 0.0 if categories[k] == "circle" else rng.uniform(-0.2, 0.2)
                half = side * 0.62 + 2  # rotated box half-extent bound + a margin
                cx, cy = rng.uniform(half, s - half, size=2)
                poly = np.clip(_outline(categories[k], cx, cy, side, angle), 0, s - 1)
                box = np.concatenate([poly.min(0), poly.max(0)])
                # at least 3 px between boxes: shapes never touch
                if any((box[:2] < b[2:] + 3).all() and (b[:2] < box[2:] + 3).all() for b in boxes):
                    continue
                placed = True
                break
            if placed:
                break
        if not placed:
            continue
        area = 0.5 * abs(
            np.dot(poly[:, 0], np.roll(poly[:, 1], 1)) - np.dot(poly[:, 1], np.roll(poly[:, 0], 1))
        )
        boxes.append(box)
        objects.append(dict(category=categories[k], colour=colours[k], size=size,
                            bbox=[round(float(v), 2) for v in box], polygon=poly,
                            area=round(float(area), 2)))  # fmt: skip
    return objects


def _draw(rng: np.random.Generator, spec: ReferringSpec, objects: list[dict]) -> np.ndarray:
    image = _background(rng, spec.image_size)
    for obj in objects:
        rgb = np.array(REFERRING_COLOURS[obj["colour"]]) + rng.integers(-12, 13, size=3)
        bgr = tuple(int(v) for v in np.clip(rgb, 0, 255)[::-1])
        pts = np.round(obj["polygon"] * 16).astype(np.int32)
        cv2.fillPoly(image, [pts], bgr, cv2.LINE_AA, shift=4)
    return image


def _choose_refs(rng: np.random.Generator, spec: ReferringSpec, objects: list[dict],
                 split: str) -> list[dict]:  # fmt: skip
    """Referents and their sentences: [{"object": i, "sentences": [(tokens, [context idx])]}]."""
    if split == "testA":
        eligible = [i for i, o in enumerate(objects) if o["category"] == "circle"]
    elif split == "testB":
        eligible = [i for i, o in enumerate(objects) if o["category"] != "circle"]
    else:
        eligible = list(range(len(objects)))
    ctx_descs = {
        c: [d for d in _descriptions(o, bare=False)
            if _unique(evaluate_referring_expression(ReferringExpression("attribute", d),
                                                     objects), c)]
        for c, o in enumerate(objects)
    }  # fmt: skip
    wanted = int(rng.integers(1, spec.max_refs_per_image + 1))
    refs = []
    for t in rng.permutation(eligible):
        if len(refs) == wanted:
            break
        t = int(t)
        groups = {k: v for k, v in _valid_expressions(objects, t, ctx_descs).items() if v}
        if not groups:
            continue
        n_sent = int(rng.integers(spec.min_sentences, spec.max_sentences + 1))
        names = list(groups)
        order = [names[int(i)] for i in rng.permutation(len(names))]
        if "relation" in groups and rng.random() < 0.7:  # most refs mention a context object
            order.remove("relation")
            order.insert(0, "relation")
        sentences: list = []
        seen: set = set()
        for attempt in range(4 * n_sent):
            if len(sentences) == n_sent:
                break
            expr = _pick(rng, groups[order[attempt % len(order)]])
            tokens = render_referring_expression(rng, expr)
            if " ".join(tokens) in seen:
                continue
            # the written sentence must parse back to a unique reference to t
            if resolve_referring_expression(tokens, objects) != t:
                raise AssertionError(f"generated {' '.join(tokens)!r} does not name object {t}")
            context = []
            if expr.form == "relation":
                context = [i for i, o in enumerate(objects) if expr.context.matches(o)]
            seen.add(" ".join(tokens))
            sentences.append((tokens, context))
        if len(sentences) >= spec.min_sentences:
            refs.append(dict(object=t, sentences=sentences))
    return refs


def generate_referring_scene(spec: ReferringSpec, index: int):
    """Scene ``index`` of ``spec`` (deterministic in (spec.seed, index)).

    Returns:
        image: uint8 (S, S, 3), BGR as cv2 writes it.
        objects: dicts ``category`` (str), ``colour`` (str), ``size`` ("big"/"small"),
            ``bbox`` [x0, y0, x1, y1] float (pixels, inside the image), ``polygon`` (V, 2)
            float64, ``area`` (float, pixels).
        refs: dicts ``object`` (index into objects) and ``sentences``: a list of
            (tokens: list[str], context: list[int] indices of the mentioned context objects).
    """
    split = spec.split_of(index)
    for attempt in range(100):
        rng = np.random.default_rng([spec.seed, index, attempt])
        objects = _scene_objects(rng, spec, split)
        if len(objects) < spec.min_objects:
            continue
        refs = _choose_refs(rng, spec, objects, split)
        if refs:
            return _draw(rng, spec, objects), objects, refs
    raise RuntimeError(f"could not generate referring scene {index} of {spec}")


def _fingerprint(spec: ReferringSpec) -> dict:
    # through JSON, so that it compares equal to what instances.json stores (tuples -> lists)
    return json.loads(json.dumps(dict(generator_version=GENERATOR_VERSION,
                                      **dataclasses.asdict(spec))))  # fmt: skip


def write_referring_dataset(
    root: str,
    spec: ReferringSpec = SYNTH_REFERRING_SPEC,
    dataset: str = SYNTH_REFERRING_DATASET,
    split_by: str = "unc",
) -> None:
    """Write the dataset under ``root`` in the refer layout (see the module docstring).

    Args:
        split_by: ``"unc"`` writes ``refs(unc).p`` with train/val/testA/testB; ``"umd"`` writes
            ``refs(umd).p`` with RefCOCOg's train/val/test (testA and testB images become test).

    ``<root>/<dataset>/instances.json`` is written last: its ``info`` (the fingerprint) marks a
    complete dataset.
    """
    if split_by not in ("unc", "umd"):
        raise ValueError(f"split_by must be 'unc' or 'umd', got {split_by!r}")
    data_dir = os.path.join(root, dataset)
    image_dir = os.path.join(root, REFER_IMAGE_DIR)
    os.makedirs(data_dir, exist_ok=True)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations, refs = [], [], []
    sent_id = 0
    for index in range(spec.num_images):
        split = spec.split_of(index)
        if split_by == "umd" and split.startswith("test"):
            split = "test"
        image, objects, scene_refs = generate_referring_scene(spec, index)
        image_id = index + 1
        file_name = f"{dataset}_{image_id:06d}.png"
        cv2.imwrite(os.path.join(image_dir, file_name), image)
        images.append(dict(id=image_id, file_name=file_name, height=spec.image_size,
                           width=spec.image_size))  # fmt: skip
        ann_ids = []
        for obj in objects:
            x0, y0, x1, y1 = obj["bbox"]
            ann_ids.append(len(annotations) + 1)
            annotations.append(dict(
                id=ann_ids[-1], image_id=image_id,
                category_id=REFERRING_CLASSES.index(obj["category"]) + 1,
                bbox=[x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)], area=obj["area"], iscrowd=0,
                segmentation=[[round(float(v), 2) for v in obj["polygon"].reshape(-1)]],
                colour=obj["colour"], size=obj["size"],
            ))  # fmt: skip
        for ref in scene_refs:
            obj = objects[ref["object"]]
            sentences, context_ids = [], set()
            for tokens, context in ref["sentences"]:
                ctx = [ann_ids[c] for c in context]
                context_ids.update(ctx)
                sent = " ".join(tokens)
                sentences.append(dict(tokens=tokens, raw=sent, sent_id=sent_id, sent=sent,
                                      context_ann_ids=ctx))  # fmt: skip
                sent_id += 1
            ann_id = ann_ids[ref["object"]]
            refs.append(dict(
                sent_ids=[s["sent_id"] for s in sentences],
                file_name=f"{dataset}_{image_id:06d}_{ann_id}.png", ann_id=ann_id,
                ref_id=len(refs), image_id=image_id, split=split,
                category_id=REFERRING_CLASSES.index(obj["category"]) + 1,
                sentences=sentences, context_ann_ids=sorted(context_ids),
            ))  # fmt: skip
    with open(os.path.join(data_dir, f"refs({split_by}).p"), "wb") as f:
        pickle.dump(refs, f, protocol=2)  # protocol 2: Python 2's refer toolkit can read it
    categories = [dict(id=i + 1, name=name, supercategory="shape")
                  for i, name in enumerate(REFERRING_CLASSES)]  # fmt: skip
    coco = dict(info=_fingerprint(spec), images=images, licenses=[], annotations=annotations,
                categories=categories)  # fmt: skip
    tmp = os.path.join(data_dir, "instances.json.tmp")
    with open(tmp, "w") as f:
        json.dump(coco, f)
    os.replace(tmp, os.path.join(data_dir, "instances.json"))


def _is_current(instances_file: str, spec: ReferringSpec) -> bool:
    try:
        with open(instances_file) as f:
            info = json.load(f).get("info", {})
    except (OSError, json.JSONDecodeError):
        return False
    return info == _fingerprint(spec)


def ensure_synth_referring(spec: ReferringSpec | None = None) -> str:
    """Generate the synthetic referring dataset under ``datasets_root()`` if missing or stale.

    Args:
        spec: defaults to :data:`SYNTH_REFERRING_SPEC` (looked up at call time).

    Returns:
        the root to pass to :func:`d2kit.data.load_refcoco` with ``dataset="synth_referring"``,
        ``split_by="unc"``.
    """
    spec = spec if spec is not None else SYNTH_REFERRING_SPEC
    root = datasets_root()
    name = SYNTH_REFERRING_DATASET
    data_dir = os.path.join(root, name)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several DDP workers may ask at once
        if _is_current(os.path.join(data_dir, "instances.json"), spec):
            return root
        logger.info(f"Generating synthetic dataset {name} ({spec.num_images} images) ...")
        tmp_root = tempfile.mkdtemp(prefix=f".{name}.", dir=root)
        try:
            write_referring_dataset(tmp_root, spec, name)
            # the image folder may be shared with real RefCOCO: replace only our own files
            image_dir = os.path.join(root, REFER_IMAGE_DIR)
            shutil.rmtree(data_dir, ignore_errors=True)
            for old in glob.glob(os.path.join(image_dir, f"{name}_*.png")):
                os.remove(old)
            os.makedirs(image_dir, exist_ok=True)
            tmp_images = os.path.join(tmp_root, REFER_IMAGE_DIR)
            for file_name in sorted(os.listdir(tmp_images)):
                os.replace(os.path.join(tmp_images, file_name), os.path.join(image_dir, file_name))
            os.replace(os.path.join(tmp_root, name), data_dir)  # last: marks the set complete
        finally:
            shutil.rmtree(tmp_root, ignore_errors=True)
        logger.info(f"Wrote {name} to {data_dir}")
    return root
