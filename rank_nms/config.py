"""Config keys of Rank-NMS, under ``cfg.MODEL.RANK_NMS``.

Defaults are the paper's reading (Tan et al., ICCV 2019, §3–4); every choice the paper leaves
open is a key whose alternatives are listed next to it (see ``projects/RankNMS/README.md``).
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_rank_nms_config"]


def add_rank_nms_config(cfg: CN) -> None:
    """Add the Rank-NMS keys to ``cfg`` in place.

    Select the heads with ``MODEL.ROI_HEADS.NAME: "RankNMSROIHeads"`` (Faster / Mask R-CNN) or
    ``"CascadeRankNMSROIHeads"`` (Cascade R-CNN).
    """
    _C = cfg
    _C.MODEL.RANK_NMS = CN()
    # α: ranking margin of Eq. (1)-(2) (Table 1: 0.5).
    _C.MODEL.RANK_NMS.MARGIN = 0.5
    # β: weight of the ranking score in the fused NMS score s = β·s_r + (1 − β)·s_c, Eq. (4)
    # (Table 2: 0.15). 0 = NMS on the class score alone.
    _C.MODEL.RANK_NMS.BETA = 0.15
    # Weight of the ranking loss in the total loss (§4.1: "summed", i.e. 1).
    _C.MODEL.RANK_NMS.LOSS_WEIGHT = 1.0

    # Eq. (3): q(ρ) = ⌈max(0, ρ − IOU_ORIGIN) / LEVEL_WIDTH⌉: 11 subsets S_0..S_10 by default.
    _C.MODEL.RANK_NMS.IOU_ORIGIN = 0.5
    _C.MODEL.RANK_NMS.LEVEL_WIDTH = 0.05
    # h of Algorithm 1: negatives per level (the paper gives no value; with all sampled RoIs
    # training the ranking, level 0 holds ~3/4 of the 512 RoIs, hence 100).
    _C.MODEL.RANK_NMS.TOP_H = 100
    # Pairs (Table 4): "hard" (Algorithm 1 with TOP_H), "all_levels" (Algorithm 1 with h = ∞:
    # every cross-level pair), "full" (every pair with ρ_i < ρ_j, Eq. (1) literally).
    _C.MODEL.RANK_NMS.PAIR_SAMPLING = "hard"
    # A level with fewer than h lower-level boxes: "take_all" (the paper's "top h elements") or
    # "skip" (a variant of related code).
    _C.MODEL.RANK_NMS.SHORT_LEVELS = "take_all"
    # Which sampled RoIs train the ranking: "sampled" (all of them, background in S_0) or
    # "foreground" (only IoU >= the foreground threshold: the paper's "positive bbox"; on the
    # synthetic quick schedule it kills the box head, see the README's training ablations).
    _C.MODEL.RANK_NMS.TRAIN_ON = "sampled"
    # Pairs within "image" (Algorithm 1 over an image's boxes) or within "gt" (boxes matched to
    # the same ground truth). Pairs never cross images.
    _C.MODEL.RANK_NMS.PAIR_GROUPING = "image"
    # N of Eq. (2): "pairs" (all pairs of the batch), "image" (mean of per-image means) or
    # "violating" (pairs with a positive hinge).
    _C.MODEL.RANK_NMS.LOSS_NORM = "pairs"
    # s_r in the loss: "raw" (the paper: Fig. 1 and Fig. 4 show scores > 1) or "sigmoid".
    _C.MODEL.RANK_NMS.LOSS_SCORE = "raw"
    # s_r in the fusion of Eq. (4): "raw" or "sigmoid".
    _C.MODEL.RANK_NMS.FUSION_SCORE = "raw"
    # ρ, the IoU the ranking learns: of the "proposal" (RoI) with its ground truth (the paper),
    # or of the "regressed" box (detached; what NMS sees), features pooled at the RoI either way.
    _C.MODEL.RANK_NMS.TARGET_BOX = "proposal"
    # Stop the ranking loss's gradient at the RoI features (the paper trains end to end: False).
    _C.MODEL.RANK_NMS.DETACH_FEATURES = False

    # Inference. The score NMS sorts by (Table 7): "fused" (NMS-Cls+LTR, Eq. (4)), "cls"
    # (NMS-Cls) or "rank" (NMS-LTR).
    _C.MODEL.RANK_NMS.NMS_SCORE = "fused"
    # The score ROI_HEADS.SCORE_THRESH_TEST is applied to: "cls" (s_c: independent of the
    # ranking score's arbitrary offset) or "fused" (s).
    _C.MODEL.RANK_NMS.SCORE_THRESH_ON = "cls"
    # The score of each output detection: "fused" (the NMS score; Fig. 4) or "cls" (s_c; hard
    # NMS only).
    _C.MODEL.RANK_NMS.OUTPUT_SCORE = "fused"
    # "nms" (ROI_HEADS.NMS_THRESH_TEST) or "soft_nms" (Table 6's "+Soft-NMS", on the NMS score;
    # a score <= 0 counts as 0 and falls below SOFT_NMS.SCORE_THRESH).
    _C.MODEL.RANK_NMS.SUPPRESSION = "nms"
    _C.MODEL.RANK_NMS.SOFT_NMS = CN()
    # "linear" (f = 1 − IoU above N_t = ROI_HEADS.NMS_THRESH_TEST; the paper's framework's
    # default) or "gaussian" (f = exp(−IoU²/σ)).
    _C.MODEL.RANK_NMS.SOFT_NMS.METHOD = "linear"
    # σ of the Gaussian decay.
    _C.MODEL.RANK_NMS.SOFT_NMS.SIGMA = 0.5
    # Boxes whose decayed score falls below this are dropped.
    _C.MODEL.RANK_NMS.SOFT_NMS.SCORE_THRESH = 0.001

    # The ranking subnetwork R(·) (§3.1, Fig. 2): RoIAlign 7×7 → NUM_FC fully connected layers
    # of FC_DIM (§4.1: 2 × 1024) with ReLU → one class-agnostic score per box.
    _C.MODEL.RANK_NMS.HEAD = CN()
    _C.MODEL.RANK_NMS.HEAD.NUM_FC = 2
    _C.MODEL.RANK_NMS.HEAD.FC_DIM = 1024
    # Std of the normal initialisation of the output layer (§4.1: "0.01 or 0.001"); bias 0.
    _C.MODEL.RANK_NMS.HEAD.OUTPUT_INIT_STD = 0.01
