"""Config keys of Ref-NMS, under ``cfg.MODEL.REF_NMS``."""

from detectron2.config import CfgNode as CN

__all__ = ["add_ref_nms_config"]


def add_ref_nms_config(cfg: CN) -> None:
    """Add the Ref-NMS keys to ``cfg`` in place (defaults: the paper, and the released code where
    the paper is silent; ref_nms.md §2.1-2.2, §6).

    Groups: the pseudo ground truth (nouns, word vectors, γ); the expression encoder and the
    relatedness module (Eqs. (1)-(2)); the losses (Eqs. (3)-(4)); the candidates, fused-score NMS
    and proposal selection at inference, and the baseline they are compared with; the frozen
    first stage and its cache; the region encoder e_v; the learning-rate schedule; data and
    evaluation; Table 2's second-stage listener (``LISTENER``).

    The model built by ``MODEL.META_ARCHITECTURE: "RefNMS"`` is the expression encoder plus the
    relatedness module (plus a trainable region encoder if ``REGION_ENCODER.NAME`` asks for
    one); the detector is ``DETECTOR_CONFIG`` + ``DETECTOR_WEIGHTS``, run once per image and
    cached (:mod:`ref_nms.first_stage`). The optimiser is Adam with ``SOLVER.BASE_LR`` /
    ``SOLVER.WEIGHT_DECAY`` (paper: 5e-3) and ``REGION_ENCODER.BASE_LR`` for e_v (paper: 4e-4;
    by default e_v is the frozen detector's box head and has nothing to train).
    """
    _C = cfg
    _C.MODEL.REF_NMS = CN()
    # γ: cosine threshold between the GloVe vectors of a noun and of a category name's words; a
    # region is a pseudo ground truth when the cosine is strictly > γ ("Training Objectives for
    # Ref-NMS", Implementation Details: γ = 0.4). Range [-1, 1].
    _C.MODEL.REF_NMS.GAMMA = 0.4
    # spaCy universal POS tags whose tokens count as the expression's nouns ("extract all nouns");
    # the released code keeps NOUN, PROPN, PRON and NUM (ref_nms.md §2.2 step 2, §6 #1).
    _C.MODEL.REF_NMS.NOUN_POS = ("NOUN", "PROPN", "PRON", "NUM")
    # GloVe embeddings of nouns and categories: a GloVe text file (glove.840B.300d.txt format;
    # the paper uses the 300-d GloVe), or "" for the table shipped for the synthetic referring
    # vocabulary (ref_nms/data/synth_referring_vectors.txt, cosines designed around γ = 0.4).
    _C.MODEL.REF_NMS.WORD_VECTORS = ""
    # A matched region whose IoU with the referent is > this is the referent or a duplicate of it,
    # not a context object (released code only, not in the paper; ref_nms.md §2.2 step 6).
    _C.MODEL.REF_NMS.REFERENT_DUPLICATE_IOU = 0.9

    # ---- Expression encoder e_q (ref_nms.md §1.2) ---------------------------------------------
    # E: dimension of the fixed word vectors (300-d GloVe; the shipped synthetic table is 40-d).
    _C.MODEL.REF_NMS.WORD_EMBED_DIM = 300
    # Hidden size of the Bi-GRU e_q per direction ("The hidden size of the encoder eq is set to
    # 256"); the word features w_j have q = 2 × this dimensions.
    _C.MODEL.REF_NMS.GRU_HIDDEN_DIM = 256
    _C.MODEL.REF_NMS.GRU_NUM_LAYERS = 1
    # Vocabulary: words seen at least this many times ("filtering the words less than 2 times")
    # and present in the word vectors; the others map to <unk> (a zero vector).
    _C.MODEL.REF_NMS.VOCAB_MIN_COUNT = 2
    # Words kept per expression in training (paper: 10 for RefCOCO/RefCOCO+, 20 for RefCOCOg) and
    # at test (released: no truncation, 0 = none; ref_nms.md §6 #10).
    _C.MODEL.REF_NMS.MAX_EXPR_LENGTH_TRAIN = 10
    _C.MODEL.REF_NMS.MAX_EXPR_LENGTH_TEST = 0

    # ---- Relatedness module, Eqs. (1)-(2) (ref_nms.md §1.3) -------------------------------------
    # Hidden width of the two-layer MLP_a (Eq. 1) and MLP_b (Eq. 2), R^v -> R^hidden -> R^q
    # (released: 1024 for v = 2048).
    _C.MODEL.REF_NMS.MLP_HIDDEN_DIM = 1024
    # Dropout on [v^a_i; w_j] before FC_s (Eq. 1) and on m_i before FC_r (Eq. 2): released 0.5,
    # absent from the paper (0 = off).
    _C.MODEL.REF_NMS.ATTENTION_DROPOUT = 0.5
    _C.MODEL.REF_NMS.FUSION_DROPOUT = 0.5
    # m_i = L2Norm(ReLU(v^b_i ⊙ q_i)) (released, True) or L2Norm(v^b_i ⊙ q_i) (Eq. 2, False).
    _C.MODEL.REF_NMS.RELU_BEFORE_NORM = True

    # ---- Training objectives, Eqs. (3)-(4) (ref_nms.md §2.1, §2.3) ----------------------------
    # "bce" (binary XE, Eq. 3) or "rank" (ranking loss, Eq. 4).
    _C.MODEL.REF_NMS.LOSS = "bce"
    # r*_i = 1 when the IoU with any foreground box is > POSITIVE_IOU ("IoU>0.5"); the release
    # uses >= (POSITIVE_IOU_INCLUSIVE: True).
    _C.MODEL.REF_NMS.POSITIVE_IOU = 0.5
    _C.MODEL.REF_NMS.POSITIVE_IOU_INCLUSIVE = False
    # Eq. (3) over "all" boxes of B (paper) or "release": BCE_NUM_SAMPLES per expression with at
    # most BCE_MAX_POSITIVE positives (32 / 16).
    _C.MODEL.REF_NMS.BCE_SAMPLING = "all"
    _C.MODEL.REF_NMS.BCE_NUM_SAMPLES = 32
    _C.MODEL.REF_NMS.BCE_MAX_POSITIVE = 16
    # 1/|B| of Eq. (3) per "expression" then the batch mean, or one mean over all "box"es.
    _C.MODEL.REF_NMS.BCE_REDUCTION = "expression"
    # α of Eq. (4), the ranking margin (0.1; the margin on sigmoid scores r_i).
    _C.MODEL.REF_NMS.RANK_MARGIN = 0.1
    # q_i = ⌈max(0, ρ_i − RANK_IOU_ORIGIN) / RANK_LEVEL_WIDTH⌉: 6 subsets for 0.5 / 0.1.
    _C.MODEL.REF_NMS.RANK_IOU_ORIGIN = 0.5
    _C.MODEL.REF_NMS.RANK_LEVEL_WIDTH = 0.1
    # h: negatives per positive, the top-h by predicted relatedness from the lower subsets (100).
    _C.MODEL.REF_NMS.RANK_TOP_H = 100
    # N of Eq. (4): "pairs" (all pos-neg pairs of the batch), "expression" or "violating".
    _C.MODEL.REF_NMS.RANK_NORMALIZATION = "pairs"
    # Candidates of the ranking loss: "all" of B (paper) or "release": RANK_NUM_NEGATIVE of level
    # 0 and RANK_PER_LEVEL of each positive level (150 / 10).
    _C.MODEL.REF_NMS.RANK_SAMPLING = "all"
    _C.MODEL.REF_NMS.RANK_NUM_NEGATIVE = 150
    _C.MODEL.REF_NMS.RANK_PER_LEVEL = 10

    # ---- Candidates, fusion, NMS, selection (ref_nms.md §1.1, §1.4) ---------------------------
    # δ: candidates are (RoI, class) pairs with confidence c > δ (0.05).
    _C.MODEL.REF_NMS.CANDIDATE_SCORE_THRESH = 0.05
    # Released: lower δ by this step while fewer than MIN_CANDIDATES_{TRAIN,TEST} pairs pass.
    _C.MODEL.REF_NMS.CANDIDATE_THRESH_STEP = 0.005
    _C.MODEL.REF_NMS.MIN_CANDIDATES_TRAIN = 32
    _C.MODEL.REF_NMS.MIN_CANDIDATES_TEST = 1
    # IoU of the per-class greedy NMS on the fused score s_i = r_i × c_i (released: 0.3).
    _C.MODEL.REF_NMS.NMS_THRESH = 0.3
    # Selection after NMS: "threshold" (top-1, then s > SELECTION_THRESH; released), "top_n"
    # (the TOP_N best; Table 1's N = 100) or "all" (every NMS survivor).
    _C.MODEL.REF_NMS.SELECTION = "threshold"
    # The released threshold "conf" is unpublished (tuned for ~8-10 proposals per expression):
    # tune it on val.
    _C.MODEL.REF_NMS.SELECTION_THRESH = 0.1
    _C.MODEL.REF_NMS.TOP_N = 100
    _C.MODEL.REF_NMS.KEEP_TOP1 = True
    # Baseline ("Real case"): per-class NMS at NMS_THRESH on c, keep c >= 0.65, lowering the
    # threshold by 0.1 while nothing passes (MAttNet run_detect.py).
    _C.MODEL.REF_NMS.BASELINE_SCORE_THRESH = 0.65
    _C.MODEL.REF_NMS.BASELINE_THRESH_STEP = 0.1

    # ---- First stage: the frozen detector (ref_nms.md §1.1, §6 #19-#20) -----------------------
    # Config file of the detector (a plain Detectron2 two-stage GeneralizedRCNN: StandardROIHeads,
    # e.g. FPN, or Res5ROIHeads, C4 as in the paper), resolved like --config-file.
    _C.MODEL.REF_NMS.DETECTOR_CONFIG = ""
    # Its weights; "" = the detector config's MODEL.WEIGHTS (random init if that is "" too, with
    # a warning: tests only). The paper's detector is fixed ("The weights of the original
    # detector are fixed during training") and trained without the RefCOCO val/test images.
    _C.MODEL.REF_NMS.DETECTOR_WEIGHTS = ""
    # KEY VALUE overrides applied to the detector config (e.g. ("MODEL.RPN.POST_NMS_TOPK_TEST",
    # "300")).
    _C.MODEL.REF_NMS.DETECTOR_OPTS = ()
    # v: dimension of the region feature v_i = e_v(b_i), the detector's box-head output of the
    # candidate's RoI (FPN: the box head's FC feature, ROI_BOX_HEAD.FC_DIM; C4: res5 mean-pooled,
    # 2048 as released). Checked against the detector when the cache is built.
    _C.MODEL.REF_NMS.VISUAL_DIM = 2048
    # Where the first-stage candidates and RoI features are cached (one torch.save file per
    # image, under a folder named by a fingerprint of the detector, its weights and δ);
    # "" = OUTPUT_DIR/first_stage_cache. Share it between runs that use the same detector.
    _C.MODEL.REF_NMS.CACHE_DIR = ""
    # dtype of the cached RoI features: "float16" (half the disk) or "float32".
    _C.MODEL.REF_NMS.CACHE_FEATURE_DTYPE = "float16"
    # Images per detector forward while building the cache.
    _C.MODEL.REF_NMS.FIRST_STAGE_BATCH_SIZE = 4
    # Also cache each RoI's pooled feature map (the box head's input: FPN C×7×7, 25 KB per RoI in
    # float16 for C = 256, 6 KB for the quick configs' 64; C4 1024×14×14, 400 KB per RoI), which
    # REGION_ENCODER.NAME "box_head" trains on. Off by default: it multiplies the cache size by
    # ~12-50 (FPN). Part of the cache folder's fingerprint only when on, so the caches of plain
    # runs are unchanged.
    _C.MODEL.REF_NMS.CACHE_POOLED_FEATURES = False

    # ---- Region encoder e_v (paper: "an RoI Pooling layer and a convolutional head network",
    # fine-tuned at 4e-4; ref_nms.md §1.1, §6 #20) ------------------------------------------
    _C.MODEL.REF_NMS.REGION_ENCODER = CN()
    # "frozen": v_i = the detector's cached box-head feature as is (the default; nothing of e_v
    # is trained). "mlp": v_i + MLP(v_i), a trainable residual two-layer MLP on the cached
    # feature whose last layer starts at zero (so training starts from the frozen feature);
    # works with any cache. "box_head": a trainable copy of the detector's own box head (FPN:
    # the FC head; C4: res5 + mean pool), initialised from the detector's weights and run on the
    # cached RoI-pooled features (needs CACHE_POOLED_FEATURES True) — the paper's fine-tuned head.
    _C.MODEL.REF_NMS.REGION_ENCODER.NAME = "frozen"
    # Adam learning rate of e_v's parameters (paper: 4e-4 for the head network; released: 2e-4
    # for its layer4 copy); the rest of the model uses SOLVER.BASE_LR.
    _C.MODEL.REF_NMS.REGION_ENCODER.BASE_LR = 4e-4
    # Hidden width of the "mlp" encoder (0 = VISUAL_DIM).
    _C.MODEL.REF_NMS.REGION_ENCODER.HIDDEN_DIM = 0

    # ---- Learning-rate schedule (ref_nms.md §2.3, §6 #11) -----------------------------------
    # "iteration": Detectron2's schedule (SOLVER.STEPS, warm-up; constant in the shipped
    # configs). "plateau": the release's ReduceLROnPlateau on the validation loss, evaluated
    # every PLATEAU.EVAL_PERIOD iterations and at the end, keeping the best-validation weights
    # (saved as OUTPUT_DIR/model_best.pth and loaded back before the final checkpoint and
    # evaluation). "plateau" needs SOLVER.STEPS () and SOLVER.WARMUP_ITERS 0.
    _C.MODEL.REF_NMS.LR_SCHEDULE = "iteration"
    _C.MODEL.REF_NMS.PLATEAU = CN()
    # Multiply every LR by FACTOR when the val loss has not improved (relative threshold
    # THRESHOLD, PyTorch's threshold_mode "rel") for more than PATIENCE evaluations; released:
    # 0.5 / 1 (BCE), 0.6 / 3 (ranking), threshold 1e-4, min LR = initial LR / 100.
    _C.MODEL.REF_NMS.PLATEAU.FACTOR = 0.5
    _C.MODEL.REF_NMS.PLATEAU.PATIENCE = 1
    _C.MODEL.REF_NMS.PLATEAU.THRESHOLD = 1e-4
    _C.MODEL.REF_NMS.PLATEAU.MIN_LR_RATIO = 0.01
    # Iterations between val-loss evaluations (released: 1000 steps).
    _C.MODEL.REF_NMS.PLATEAU.EVAL_PERIOD = 1000
    # The dataset of the val loss ("" = DATASETS.TEST[0]); its expressions are built like the
    # training ones (MIN_CANDIDATES_TRAIN, the same sampling, dropout off, a fixed seed).
    _C.MODEL.REF_NMS.PLATEAU.DATASET = ""
    # Use only its first N images (0 = all).
    _C.MODEL.REF_NMS.PLATEAU.MAX_IMAGES = 0

    # ---- Data ----------------------------------------------------------------------------------
    # Root of the refer layout (<root>/<dataset>/refs(<split_by>).p, <root>/<dataset>/
    # instances.json, <root>/images/mscoco/images/train2014/) for the dataset names
    # refcoco_unc_*, refcoco+_unc_*, refcocog_umd_*, refcocog_google_* of DATASETS, registered
    # with d2kit.data.register_refcoco when first used; "" = d2kit's datasets root ($D2KIT_DATASETS
    # or <repo>/datasets), where the synthetic referring data lives too.
    _C.MODEL.REF_NMS.REFER_ROOT = ""
    # Datasets whose tokens make the vocabulary (count >= VOCAB_MIN_COUNT and in the word
    # vectors); () = DATASETS.TRAIN. The release counts every split, val/test included (§6 #9).
    _C.MODEL.REF_NMS.VOCAB_DATASETS = ()
    # Use only the first N images of each training / test dataset (0 = all): quick runs, tests.
    _C.MODEL.REF_NMS.MAX_TRAIN_IMAGES = 0
    _C.MODEL.REF_NMS.MAX_TEST_IMAGES = 0

    # ---- Evaluation (Table 1) ----------------------------------------------------------------
    # A proposal recalls a box when their IoU is > this (the paper's "IoU>0.5", hit_rate_utils).
    _C.MODEL.REF_NMS.RECALL_IOU = 0.5
    # Extra selection thresholds ("conf") evaluated for the recall / proposals-per-expression
    # trade-off; with any, the results also hold "matched/*": the threshold whose mean number
    # of proposals per expression is closest to the baseline's ("Real" rows at a matched count).
    _C.MODEL.REF_NMS.EVAL_SELECTION_THRESHS = ()

    # ---- Second stage for Table 2: a small built-in listener (ref_nms/grounding.py) ---------
    # A MAttNet-style grounding model (subject, location and relation modules over the
    # proposals; softmax over an image's proposals, cross-entropy on the referent), trained on
    # the ground-truth regions as two-stage methods are, then fed each proposal set (Table 2).
    # Its region features are the frozen detector's box-head features pooled at each box.
    _C.MODEL.REF_NMS.LISTENER = CN()
    # Bi-GRU hidden size per direction of its own expression encoder (same word vectors).
    _C.MODEL.REF_NMS.LISTENER.GRU_HIDDEN_DIM = 64
    # Hidden width of the module MLPs and the joint embedding width of the matching scores.
    _C.MODEL.REF_NMS.LISTENER.HIDDEN_DIM = 128
    _C.MODEL.REF_NMS.LISTENER.EMBED_DIM = 64
    # Same-class neighbours in the location module's relative offsets (MAttNet: 5).
    _C.MODEL.REF_NMS.LISTENER.LOCATION_NEIGHBOURS = 5
    # Relation module: each proposal against every other proposal of the list (max over them).
    _C.MODEL.REF_NMS.LISTENER.RELATION = True
    # Dropout on the module inputs while training (0 = off).
    _C.MODEL.REF_NMS.LISTENER.DROPOUT = 0.5
    # Training on the ground-truth regions: Adam, epochs over the training expressions.
    _C.MODEL.REF_NMS.LISTENER.EPOCHS = 15
    _C.MODEL.REF_NMS.LISTENER.BATCH_SIZE = 32
    _C.MODEL.REF_NMS.LISTENER.BASE_LR = 1e-3
    _C.MODEL.REF_NMS.LISTENER.WEIGHT_DECAY = 0.0
    # A prediction is correct when its IoU with the referent is > this (paper: "larger than
    # 0.5"; strict).
    _C.MODEL.REF_NMS.LISTENER.HIT_IOU = 0.5
    # Datasets whose ground-truth regions train the listener (() = DATASETS.TRAIN).
    _C.MODEL.REF_NMS.LISTENER.TRAIN_DATASETS = ()
