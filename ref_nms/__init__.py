"""Ref-NMS (Chen, Ma, Xiao, Zhang, Chang, AAAI 2021): expression-aware proposals for two-stage
referring expression grounding.

A relatedness module scores each detector box against the expression, and NMS runs on the fused
score relatedness × confidence, so that the proposals keep the referent and the objects the
expression mentions. Trained with pseudo ground truth: the regions whose category matches a
noun of the expression (spaCy POS tags, GloVe cosine > γ).

So far this package has the word-level parts: word vectors (GloVe text format, and a table
shipped for the synthetic referring vocabulary), spaCy noun extraction, noun-category matching
and the pseudo ground truth ("critical objects"). Importing it does not import spaCy.
"""

from .config import add_ref_nms_config
from .pseudo_gt import (
    PseudoGroundTruth,
    box_iou_xyxy,
    critical_objects,
    mean_precision_recall,
    pseudo_ground_truth,
    pseudo_gt_precision_recall,
)
from .words import (
    DEFAULT_NOUN_POS,
    SYNTH_VECTORS_PATH,
    WordVectors,
    category_similarities,
    extract_nouns,
    extract_nouns_batch,
    load_spacy_model,
    load_synth_vectors,
    load_word_vectors,
    matching_categories,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
