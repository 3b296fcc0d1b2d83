"""ref_nms.words: GloVe parsing, cosines, spaCy nouns, noun-category matching (ref_nms.md §2.2,
§7)."""

import math
import os
import runpy

import numpy as np
import pytest
import torch

from ref_nms import (
    SYNTH_VECTORS_PATH,
    WordVectors,
    add_ref_nms_config,
    category_similarities,
    extract_nouns,
    extract_nouns_batch,
    load_spacy_model,
    load_synth_vectors,
    load_word_vectors,
    matching_categories,
)

MAKE_SYNTH = os.path.join(os.path.dirname(SYNTH_VECTORS_PATH), "make_synth_vectors.py")


def write(tmp_path, text, name="vectors.txt", mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------------------------
# GloVe text parser (T7)


def test_glove_basic_and_lookup(tmp_path):
    path = write(tmp_path, "the 0.1 0.2 0.3\nman 1 0 0\nMan 0 1 0\n")
    wv = WordVectors.from_glove(path)
    assert len(wv) == 3 and wv.dim == 3
    v = wv["the"]
    assert v.dtype == torch.float32 and v.shape == (3,)
    assert torch.allclose(v, torch.tensor([0.1, 0.2, 0.3]))
    # exact first, then lower case
    assert wv["Man"].tolist() == [0, 1, 0]
    assert wv["man"].tolist() == [1, 0, 0]
    assert wv["THE"].tolist() == wv["the"].tolist()
    assert "THE" in wv and "zebra" not in wv and 3 not in wv
    assert wv.words == ["the", "man", "Man"]
    # a copy: changing it does not change the table
    v[0] = 5.0
    assert wv["the"][0].item() == pytest.approx(0.1)


def test_glove_words_with_spaces(tmp_path):
    nbsp = "a\u00a0b"
    text = f"the 0.1 0.2 0.3\n. . . 1 2 3\n{nbsp} 4 5 6\nnew york 7 8 9\n"
    wv = WordVectors.from_glove(write(tmp_path, text))
    assert wv[". . ."].tolist() == [1, 2, 3]
    assert wv[nbsp].tolist() == [4, 5, 6]
    assert wv["new york"].tolist() == [7, 8, 9]
    # the first line's word has spaces: D is inferred from the numeric tail
    wv = WordVectors.from_glove(write(tmp_path, ". . . 1 2 3\nthe 4 5 6\n", "b.txt"))
    assert wv.dim == 3 and wv[". . ."].tolist() == [1, 2, 3]


def test_glove_dim_argument(tmp_path):
    path = write(tmp_path, "the 0.1 0.2 0.3\nman 1 0 0\n")
    assert WordVectors.from_glove(path, dim=3).dim == 3
    with pytest.raises(ValueError, match=r"vectors\.txt:1: expected a word and 4 numbers"):
        WordVectors.from_glove(path, dim=4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="dim"):
            WordVectors.from_glove(path, dim=bad)


def test_glove_ragged_line_names_file_and_line(tmp_path):
    path = write(tmp_path, "the 0.1 0.2 0.3\nman 1 0 0\ndog 1 0\n")
    with pytest.raises(ValueError, match=r"vectors\.txt:3: expected a word and 3 numbers"):
        WordVectors.from_glove(path)


def test_glove_non_numeric_and_non_finite(tmp_path):
    path = write(tmp_path, "the 0.1 0.2 0.3\nman 1 abc 0\n")
    with pytest.raises(ValueError, match=r"vectors\.txt:2: non-numeric value 'abc'"):
        WordVectors.from_glove(path)
    path = write(tmp_path, "the 0.1 0.2 0.3\nman 1 nan 0\n", "n.txt")
    with pytest.raises(ValueError, match=r"n\.txt:2: NaN or infinite"):
        WordVectors.from_glove(path)
    # a double space leaves an empty field
    path = write(tmp_path, "the 0.1 0.2 0.3\nman 1  0\n", "d.txt")
    with pytest.raises(ValueError, match=r"d\.txt:2: non-numeric value ''"):
        WordVectors.from_glove(path)
    path = write(tmp_path, "the a b c\n", "w.txt")
    with pytest.raises(ValueError, match=r"w\.txt:1: .*does not end with a number"):
        WordVectors.from_glove(path)


def test_glove_empty_file_blank_lines_crlf_duplicates(tmp_path):
    for i, text in enumerate(["", "\n\n  \n"]):
        with pytest.raises(ValueError, match="no word vectors"):
            WordVectors.from_glove(write(tmp_path, text, f"e{i}.txt"))
    path = write(tmp_path, b"the 1 2\r\n\r\nman 3 4\r\nthe 5 6\n", "crlf.txt", mode="wb")
    wv = WordVectors.from_glove(path)
    assert wv.words == ["the", "man"]
    assert wv["the"].tolist() == [1, 2]  # the first line of a repeated word wins
    path = write(tmp_path, b"the 1 2\n\xff\xfe 3 4\n", "bad.txt", mode="wb")
    with pytest.raises(ValueError, match=r"bad\.txt:2: not valid UTF-8"):
        WordVectors.from_glove(path)
    with pytest.raises(FileNotFoundError):
        WordVectors.from_glove(str(tmp_path / "missing.txt"))


def test_glove_vocab_filter(tmp_path):
    path = write(tmp_path, "the 1 0\nMan 0 1\nman 1 1\nzebra 2 2\n")
    wv = WordVectors.from_glove(path, vocab=["man", "dog"])
    assert wv.words == ["Man", "man"] and wv.dim == 2
    wv = WordVectors.from_glove(path, vocab={"MAN"})
    assert wv["man"].tolist() == [1, 1]
    wv = WordVectors.from_glove(path, vocab=[])
    assert len(wv) == 0 and wv.dim == 2 and "the" not in wv
    with pytest.raises(ValueError, match="vocab"):
        WordVectors.from_glove(path, vocab="man")


# ------------------------------------------------------------------------------------------------
# WordVectors from a dict / table, cosine


def test_word_vectors_from_dict_and_table():
    wv = WordVectors({"a": [3.0, 4.0], "b": np.array([4.0, 3.0]), "c": torch.tensor([0.0, 0.0])})
    assert len(wv) == 3 and wv.dim == 2 and list(wv) == ["a", "b", "c"]
    with pytest.raises(KeyError, match="'zebra'.*not in the word vectors"):
        wv["zebra"]
    assert wv.get("zebra") is None
    wt = WordVectors.from_table(["a", "b"], np.array([[3.0, 4.0], [4.0, 3.0]]))
    assert wt["b"].tolist() == [4.0, 3.0]
    with pytest.raises(ValueError, match="len"):
        WordVectors.from_table(["a"], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="one length"):
        WordVectors({"a": [1.0, 2.0], "b": [1.0]})
    with pytest.raises(ValueError, match="dim"):
        WordVectors({})
    assert WordVectors({}, dim=4).dim == 4
    with pytest.raises(ValueError, match="NaN"):
        WordVectors({"a": [1.0, float("inf")]})
    with pytest.raises(ValueError, match="duplicate"):
        WordVectors.from_table(["a", "a"], np.zeros((2, 3)))


def test_cosine_hand_values_and_zero_vector():
    wv = WordVectors({"a": [3.0, 4.0], "b": [4.0, 3.0], "c": [0.0, 0.0], "d": [-6.0, -8.0]})
    assert wv.cosine("a", "b") == pytest.approx(24 / 25, abs=1e-7)
    assert wv.cosine("a", "d") == pytest.approx(-1.0, abs=1e-7)
    assert wv.cosine("a", "a") == pytest.approx(1.0, abs=1e-7)
    assert wv.cosine("a", "c") == 0.0 and wv.cosine("c", "c") == 0.0  # not NaN
    assert isinstance(wv.cosine("a", "b"), float)
    with pytest.raises(KeyError):
        wv.cosine("a", "zebra")


# ------------------------------------------------------------------------------------------------
# spaCy nouns (en_core_web_sm 3.8.0 tags; ref_nms.md §5.3)


@pytest.fixture(scope="module")
def nlp():
    return load_spacy_model()  # loaded once per process; fails (not skips) without spaCy


def test_spacy_model_is_cached(nlp):
    assert load_spacy_model() is nlp
    assert "tagger" in nlp.pipe_names and "ner" not in nlp.pipe_names


def test_extract_nouns_synthetic_style(nlp):
    nouns = extract_nouns("the red circle left of the blue box")
    assert {"circle", "box"} <= set(nouns)
    assert extract_nouns("the red circle left of the blue box", pos=("NOUN",)) == ["circle", "box"]
    assert extract_nouns("the big ring next to the small yellow wedge") == ["ring", "wedge"]
    assert extract_nouns("second from right") == []
    upper = extract_nouns("The Red CIRCLE left of the Blue Box")
    assert "circle" in upper and all(n == n.lower() for n in upper)


def test_extract_nouns_released_pos_set(nlp):
    # PRON and NUM are in the released set (ref_nms.md §5.3 table); text, not lemma
    assert extract_nouns("player with the number 7 on his back") == [
        "player",
        "number",
        "7",
        "his",
        "back",
    ]
    assert "boxes" in extract_nouns("the two boxes on the left")


def test_extract_nouns_empty_and_batch(nlp):
    assert extract_nouns("") == [] and extract_nouns("   \n") == []
    sents = ["the red circle left of the blue box", "", "leftmost triangle", "second from right"]
    assert extract_nouns_batch(sents) == [extract_nouns(s) for s in sents]
    assert extract_nouns_batch([]) == []


def test_extract_nouns_bad_input():
    for bad in (None, 3, ["a", "circle"], b"circle"):
        with pytest.raises(ValueError, match="sentence"):
            extract_nouns(bad)
    with pytest.raises(ValueError, match="pos"):
        extract_nouns("a circle", pos="NOUN")
    with pytest.raises(ValueError, match="unknown tags.*NOUNS"):
        extract_nouns("a circle", pos=("NOUNS",))
    with pytest.raises(ValueError, match="sentences"):
        extract_nouns_batch("a circle")
    with pytest.raises(ValueError, match=r"sentences\[1\]"):
        extract_nouns_batch(["a circle", None])


# ------------------------------------------------------------------------------------------------
# Noun -> category matching: T1 of ref_nms.md §7 (4-d table, γ = 0.4)

T1_VECTORS = {
    "man": (1, 0, 0, 0),
    "person": (0.6, 0.8, 0, 0),
    "dining": (0, 0, 1, 0),
    "table": (0, 0, 0.6, 0.8),
    "desk": (0, 0, 0.28, 0.96),
    "shirt": (0, -1, 0, 0),
    "dog": (0, 0, -1, 0),
    "hot": (0, 0, 0, -1),
    "puppy": (0, 0.6, -0.8, 0),
}
T1_CATEGORIES = ["person", "dining table", "dog", "hot dog"]


@pytest.fixture(scope="module")
def t1_wv():
    return WordVectors(T1_VECTORS)


@pytest.mark.parametrize(
    "nouns, expected",
    [
        (["man", "desk"], {"person", "dining table"}),
        (["shirt"], set()),
        (["puppy"], {"person", "dog", "hot dog"}),
        (["dog"], {"dog", "hot dog"}),  # multi-word name: max over words ("dog" -> "hot dog")
        ([], set()),
        (["zebra"], set()),  # missing from the vectors: skipped
        (["zebra", "man"], {"person"}),
        (["Man"], {"person"}),  # lower-case fallback
    ],
)
def test_t1_matching(t1_wv, nouns, expected):
    assert matching_categories(nouns, T1_CATEGORIES, t1_wv) == expected


def test_t1_scores(t1_wv):
    scores = category_similarities(["man", "desk"], T1_CATEGORIES, t1_wv)
    assert scores["person"] == pytest.approx(0.6, abs=1e-6)
    assert scores["dining table"] == pytest.approx(0.936, abs=1e-6)  # desk~table, not ~dining
    assert scores["dog"] == pytest.approx(0.0, abs=1e-7)
    assert scores["hot dog"] == pytest.approx(0.0, abs=1e-7)
    scores = category_similarities(["puppy"], T1_CATEGORIES, t1_wv)
    assert scores["dining table"] == pytest.approx(-0.48, abs=1e-6)
    assert category_similarities([], T1_CATEGORIES, t1_wv) == dict.fromkeys(T1_CATEGORIES)


def test_t1_strictly_greater_than_gamma(t1_wv):
    # man~person = 0.6: test on either side of it (ref_nms.md §7 T1 "Boundaries")
    assert matching_categories(["man"], ["person"], t1_wv, gamma=0.59) == {"person"}
    assert matching_categories(["man"], ["person"], t1_wv, gamma=0.61) == set()
    # exactly γ (cosines 1.0 and 0.0 are exact): no match
    assert matching_categories(["dog"], ["dog"], t1_wv, gamma=1.0) == set()
    assert matching_categories(["shirt"], T1_CATEGORIES, t1_wv, gamma=0.0) == set()
    assert matching_categories(["shirt"], T1_CATEGORIES, t1_wv, gamma=-0.01) == {
        "dining table",
        "dog",
        "hot dog",
    }
    # no nouns never matches, whatever γ
    assert matching_categories([], T1_CATEGORIES, t1_wv, gamma=-1.0) == set()


def test_missing_category_words(t1_wv):
    cats = T1_CATEGORIES + ["toaster oven", "hot zebra"]
    assert matching_categories(["dog"], cats, t1_wv) == {"dog", "hot dog"}
    # a name with no word in the vectors never matches; one with some words uses those
    assert matching_categories(["shirt"], cats, t1_wv, gamma=-0.01) >= {"hot zebra"}
    assert "toaster oven" not in matching_categories(["shirt"], cats, t1_wv, gamma=-1.0)
    with pytest.raises(KeyError, match="'toaster' of category 'toaster oven'"):
        matching_categories(["dog"], cats, t1_wv, strict=True)


def test_matching_bad_input(t1_wv):
    for bad in (1.5, -1.01, float("nan"), "0.4", True, None):
        with pytest.raises(ValueError, match="gamma"):
            matching_categories(["man"], T1_CATEGORIES, t1_wv, gamma=bad)
    with pytest.raises(ValueError, match="nouns"):
        matching_categories("man", T1_CATEGORIES, t1_wv)
    with pytest.raises(ValueError, match="nouns"):
        matching_categories(["man", 3], T1_CATEGORIES, t1_wv)
    with pytest.raises(ValueError, match="category_names"):
        matching_categories(["man"], "person", t1_wv)
    with pytest.raises(ValueError, match="empty category name"):
        matching_categories(["man"], ["person", " "], t1_wv)
    with pytest.raises(ValueError, match="wv"):
        matching_categories(["man"], T1_CATEGORIES, T1_VECTORS)


# ------------------------------------------------------------------------------------------------
# The shipped synthetic table

SYN = runpy.run_path(MAKE_SYNTH)  # the generator's vocabulary and design constants
CATS = SYN["CATEGORY_SYNONYMS"]
CATEGORY_WORDS = [w for ws in CATS.values() for w in ws]


def test_synth_table_vocabulary():
    wv = load_synth_vectors()
    assert load_synth_vectors() is wv and load_word_vectors("") is wv
    expected = {
        *"circle ring disc square box block triangle wedge pyramid".split(),
        *"red green blue yellow purple orange big large small little".split(),
        *"left right above below next to of the leftmost rightmost first second third".split(),
        *"from thing object one".split(),
    }
    assert set(wv.words) == expected and len(wv) == 36 and wv.dim == SYN["DIM"]


def test_synth_table_designed_cosines():
    wv = load_synth_vectors()
    gamma = 0.4
    for cat, syns in CATS.items():
        for a in syns:
            assert wv.cosine(a, cat) > gamma
            for b in syns:
                if a != b:
                    assert wv.cosine(a, b) == pytest.approx(0.8, abs=1e-4)
            for other_cat, other_syns in CATS.items():
                if other_cat != cat:
                    for b in other_syns:
                        assert abs(wv.cosine(a, b)) <= 0.1
    for w in SYN["OTHER_WORDS"]:
        for c in CATEGORY_WORDS:
            assert abs(wv.cosine(w, c)) < 0.2
        for v in SYN["OTHER_WORDS"]:
            if v != w:
                assert abs(wv.cosine(w, v)) < 0.05  # the encoder can tell "left" from "right"


def test_synth_table_is_what_the_script_writes():
    shipped = SYN["parse_table"](open(SYNTH_VECTORS_PATH, encoding="utf-8").read())
    regenerated = SYN["parse_table"](SYN["format_table"](SYN["build_table"](0)))
    assert list(shipped) == list(regenerated)
    for w in shipped:
        np.testing.assert_allclose(shipped[w], regenerated[w], atol=2e-6)
    SYN["check_design"](shipped)


@pytest.mark.parametrize(
    "sentence, expected",
    [
        ("the red circle left of the blue box", {"circle", "square"}),
        ("the big ring next to the small yellow wedge", {"circle", "triangle"}),
        ("the block to the left of the purple disc", {"square", "circle"}),
        ("leftmost pyramid", {"triangle"}),
        ("the third one from the left", set()),
        ("small orange object below the large green pyramid", {"triangle"}),
        ("second from right", set()),
    ],
)
def test_synth_sentences_match_categories(nlp, sentence, expected):
    nouns = extract_nouns(sentence)
    assert matching_categories(nouns, list(CATS), load_synth_vectors(), 0.4) == expected


def test_load_word_vectors_path(tmp_path):
    path = write(tmp_path, "circle 1 0\nsquare 0 1\n")
    wv = load_word_vectors(path, vocab=["circle"])
    assert wv.words == ["circle"]
    with pytest.raises(ValueError, match="path"):
        load_word_vectors(None)


def test_config_keys():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_ref_nms_config(cfg)
    assert cfg.MODEL.REF_NMS.GAMMA == 0.4
    assert tuple(cfg.MODEL.REF_NMS.NOUN_POS) == ("NOUN", "PROPN", "PRON", "NUM")
    assert cfg.MODEL.REF_NMS.WORD_VECTORS == ""
    assert cfg.MODEL.REF_NMS.REFERENT_DUPLICATE_IOU == 0.9
    cfg.merge_from_list(["MODEL.REF_NMS.NOUN_POS", '("NOUN",)', "MODEL.REF_NMS.GAMMA", "0.5"])
    assert tuple(cfg.MODEL.REF_NMS.NOUN_POS) == ("NOUN",) and cfg.MODEL.REF_NMS.GAMMA == 0.5
    assert math.isclose(
        float(load_word_vectors(cfg.MODEL.REF_NMS.WORD_VECTORS).cosine("box", "square")),
        0.8,
        abs_tol=1e-4,
    )
