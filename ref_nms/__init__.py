"""Ref-NMS (Chen, Ma, Xiao, Zhang, Chang, AAAI 2021): expression-aware proposals for two-stage
referring expression grounding.

A relatedness module scores each detector box against the expression, and NMS runs on the fused
score relatedness × confidence, so that the proposals keep the referent and the objects the
expression mentions. Trained with pseudo ground truth: the regions whose category matches a
noun of the expression (spaCy POS tags, GloVe cosine > γ).

So far this package has the word-level parts (word vectors in GloVe text format and a table
shipped for the synthetic referring vocabulary, spaCy noun extraction, noun-category matching,
the pseudo ground truth or "critical objects") and the model core as plain modules and functions:
the expression encoder and relatedness module (Eqs. (1)-(2)), the score fusion, the losses
(Eqs. (3)-(4); the ranking loss reuses ``rank_nms.ranking``), and the fused-score NMS and
proposal selection with the baseline rule; the frozen first stage and its per-image cache
(:mod:`ref_nms.first_stage`), the ``RefNMS`` meta-architecture (e_q + relatedness module on the
cached candidates, :mod:`ref_nms.modeling`), the Table 1 evaluator (:mod:`ref_nms.evaluation`),
the trainer behind ``projects/RefNMS/train_net.py`` (:mod:`ref_nms.trainer`, with the
released ReduceLROnPlateau schedule as an option), the MAttNet ``matt_dets`` writer
(``python -m ref_nms.export_proposals``) and, for Table 2, a small MAttNet-style second-stage
listener trained on ground-truth regions and fed each proposal set (:mod:`ref_nms.grounding`).
Importing it does not import spaCy.
"""

from .config import add_ref_nms_config
from .evaluation import RefNMSEvaluator, expression_recall, summarize_recall
from .first_stage import (
    box_features,
    build_detector,
    build_first_stage_cache,
    first_stage_candidates,
    load_candidates,
    region_head,
)
from .grounding import (
    LISTENER_MODULES,
    Listener,
    box_geometry,
    build_listener,
    build_listener_images,
    evaluate_listener,
    expression_proposals,
    grounding_accuracy,
    grounding_hit,
    listener_examples,
    listener_settings,
    relative_geometry,
    train_listener,
)
from .losses import (
    BCE_REDUCTIONS,
    BCE_SAMPLINGS,
    RANK_NORMALIZATIONS,
    bce_loss,
    box_iou,
    rank_loss,
    relatedness_targets,
    sample_bce_proposals,
    sample_rank_proposals,
)
from .modeling import REGION_ENCODERS, RefNMS, ResidualMLPEncoder, build_region_encoder
from .pseudo_gt import (
    PseudoGroundTruth,
    box_iou_xyxy,
    critical_objects,
    mean_precision_recall,
    pseudo_ground_truth,
    pseudo_gt_precision_recall,
)
from .relatedness import (
    UNK,
    ExpressionEncoder,
    RelatednessModule,
    WordLookup,
    build_vocabulary,
    fuse_scores,
    masked_softmax,
)
from .selection import baseline_proposals, filter_candidates, select_proposals
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

#: META_ARCHITECTURE -> the Trainer that trains it, for launchers that serve every project
#: (``d2kit-train``, :func:`d2kit.projects.project_trainer`); imported on first use
TRAINERS = {"RefNMS": "ref_nms.trainer:RefNMSTrainer"}

__all__ = [k for k in globals().keys() if not k.startswith("_")]
