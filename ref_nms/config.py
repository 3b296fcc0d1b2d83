"""Config keys of Ref-NMS, under ``cfg.MODEL.REF_NMS``."""

from detectron2.config import CfgNode as CN

__all__ = ["add_ref_nms_config"]


def add_ref_nms_config(cfg: CN) -> None:
    """Add the Ref-NMS keys to ``cfg`` in place (defaults: the paper, and the released code where
    the paper is silent; ref_nms.md §2.1-2.2, §6).

    So far: the pseudo ground truth of the training objectives (nouns, word vectors, γ).
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
