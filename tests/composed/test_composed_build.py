"""The composed heads are assembled from MODEL.COMPOSE / MODEL.SUPPRESSION; conflicting or
unsupported combinations, unknown names and keys nothing reads fail at model build, naming the
keys and components involved."""

import pytest
import torch
from composed_helpers import CASCADE, COMBINATIONS, FASTER, RETINA, composed_cfg, tiny_batch
from detectron2.config import configurable
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.utils.events import EventStorage

from d2kit.compose import Component, CompositionError, assemble, register_component
from d2kit.composed import ComposedOutputLayers, ComposedROIHeads, ComposedRPN, compose
from d2kit.engine import Trainer
from d2kit.suppression import Suppression
from hnms.suppression import HashNMS, HashPrefilter, SoftNMS
from noisy_anchors.retinanet import NoisyAnchorsRetinaNetMixin
from noisy_anchors.rpn import NoisyAnchorsRPNMixin
from overlap_sampler import LossWeightMixin, OverlapSamplerMixin
from rank_nms import RankNMSMixin, RankNMSPredictorMixin

C = "MODEL.COMPOSE."
ROI = ["MODEL.ROI_HEADS.NAME", "ComposedROIHeads"]


def _build(path, *opts):
    torch.manual_seed(0)  # fixed weights: the same detections on every run
    return build_model(composed_cfg(path, *opts))


def test_combination_1_retinanet():
    model = _build(COMBINATIONS["retinanet_na_hnms_soft"])
    assert isinstance(model, NoisyAnchorsRetinaNetMixin)
    s = model.detection_suppression
    assert isinstance(s.method, SoftNMS) and isinstance(s.prefilter, HashPrefilter)
    assert (s.prefilter.alpha, s.method.method, s.method.sigma) == (0.73, "gaussian", 0.5)


def test_combination_2_faster():
    model = _build(COMBINATIONS["faster_na_hashrpn_os"])
    rpn, heads = model.proposal_generator, model.roi_heads
    assert isinstance(rpn, ComposedRPN) and isinstance(rpn, NoisyAnchorsRPNMixin)
    assert isinstance(rpn.proposal_suppression.method, HashNMS)
    assert rpn.proposal_suppression.method.alpha == 0.7
    assert isinstance(heads, ComposedROIHeads) and isinstance(heads, OverlapSamplerMixin)
    assert isinstance(heads.box_predictor, LossWeightMixin)
    assert heads.box_predictor.detection_suppression.is_default  # Detectron2's NMS


@pytest.mark.parametrize("name", ["faster_os_rank_hnms_soft", "mask_os_rank_hnms_soft"])
def test_combinations_3_and_4_heads(name):
    model = _build(COMBINATIONS[name])
    heads = model.roi_heads
    assert isinstance(heads, OverlapSamplerMixin) and isinstance(heads, RankNMSMixin)
    predictor = heads.box_predictor
    assert isinstance(predictor, RankNMSPredictorMixin) and isinstance(predictor, LossWeightMixin)
    # the ranking wraps the weighted losses: it runs first and calls them through super()
    mro = type(predictor).__mro__
    assert mro.index(RankNMSPredictorMixin) < mro.index(LossWeightMixin)
    s = predictor.detection_suppression
    assert isinstance(s.method, SoftNMS) and isinstance(s.prefilter, HashPrefilter)
    assert type(model.proposal_generator).__name__ == "RPN"
    assert heads.mask_on == name.startswith("mask")


def test_combination_5_all_in_one():
    model = _build(COMBINATIONS["all_in_one"])
    rpn, heads = model.proposal_generator, model.roi_heads
    assert isinstance(rpn, NoisyAnchorsRPNMixin)
    assert isinstance(rpn.proposal_suppression.method, HashNMS)
    assert isinstance(heads, OverlapSamplerMixin) and isinstance(heads, RankNMSMixin)
    assert isinstance(heads.box_predictor.detection_suppression.method, SoftNMS)


def test_same_combination_same_class():
    a = compose(ComposedROIHeads, {"SAMPLER": "overlap_sampler", "SCORING": "rank_nms"})
    b = compose(ComposedROIHeads, {"SCORING": "rank_nms", "SAMPLER": "overlap_sampler"})
    assert a is b and issubclass(a, ComposedROIHeads)
    assert a._components == (
        "MODEL.COMPOSE.ROI_HEADS.SAMPLER = 'overlap_sampler'",
        "MODEL.COMPOSE.ROI_HEADS.SCORING = 'rank_nms'",
    )


def test_composed_training_uses_every_component():
    model = _build(COMBINATIONS["all_in_one"])
    model.train()
    with EventStorage() as storage:
        losses = model(tiny_batch())
        logged = storage.latest()
    assert {"loss_rank", "loss_cls", "loss_rpn_cls"} <= set(losses)
    assert "noisy_anchors/rpn/mean_cleanliness" in logged  # Noisy Anchors in the RPN
    assert "hnms/rpn_kept_fraction" in logged  # HNMS in the RPN
    assert "overlap_sampler/num_reweighted" in logged  # the Overlap Sampler
    assert "rank_nms/pairs_per_image" in logged  # the ranking loss


# ---------------------------------------------------------------------------------------------
# Conflicts and combinations that cannot work
# ---------------------------------------------------------------------------------------------
@register_component("ROI_HEADS", "SCORING", "test_sampling_scorer", base=StandardROIHeads)
class _SamplingScorer(Component):
    """A scoring component that (wrongly) also takes the RoI sampling."""

    claims = ("label_and_sample_proposals",)

    def label_and_sample_proposals(self, proposals, targets):
        return super().label_and_sample_proposals(proposals, targets)


class _PlainInference(Component):
    """A predictor component that owns inference but ignores the configured suppression."""

    claims = ("inference",)

    def inference(self, predictions, proposals):
        return super(ComposedOutputLayers, self).inference(predictions, proposals)


@register_component("ROI_HEADS", "SCORING", "test_plain_inference", base=StandardROIHeads)
class _PlainInferenceScorer(Component):
    predictor_components = (_PlainInference,)


def test_two_components_claiming_one_hook_fail_naming_both():
    opts = [*ROI, C + "ROI_HEADS.SAMPLER", "overlap_sampler"]
    with pytest.raises(CompositionError) as e:
        _build(FASTER, *opts, C + "ROI_HEADS.SCORING", "test_sampling_scorer")
    message = str(e.value)
    assert "MODEL.COMPOSE.ROI_HEADS.SAMPLER = 'overlap_sampler'" in message
    assert "MODEL.COMPOSE.ROI_HEADS.SCORING = 'test_sampling_scorer'" in message
    assert "label_and_sample_proposals" in message
    # alone, it builds
    _build(FASTER, *ROI, C + "ROI_HEADS.SCORING", "test_sampling_scorer")


def test_predictor_components_claiming_one_hook_fail_naming_both():
    with pytest.raises(CompositionError, match=r"(?s)rank_nms.*test_plain_inference.*inference"):
        assemble(
            ComposedOutputLayers,
            [("rank_nms", RankNMSPredictorMixin), ("test_plain_inference", _PlainInference)],
            reserved=(),
        )


def test_an_owner_of_inference_that_ignores_the_suppression_cannot_take_one():
    opts = [*ROI, C + "ROI_HEADS.SCORING", "test_plain_inference"]
    _build(FASTER, *opts)  # with NMS it works
    with pytest.raises(CompositionError, match=r"(?s)soft_nms.*test_plain_inference.*inference"):
        _build(FASTER, *opts, "MODEL.SUPPRESSION.METHOD", "soft_nms")


def test_cascade_with_an_unsupported_method_fails_naming_both():
    cascade = ["MODEL.ROI_HEADS.NAME", "ComposedCascadeROIHeads"]
    with pytest.raises(CompositionError) as e:
        _build(CASCADE, *cascade, C + "ROI_HEADS.SAMPLER", "overlap_sampler")
    assert "MODEL.COMPOSE.ROI_HEADS.SAMPLER = 'overlap_sampler'" in str(e.value)
    assert "ComposedCascadeROIHeads" in str(e.value) and "CascadeROIHeads" in str(e.value)
    # a suppression other than NMS needs a component that owns Cascade's inference
    with pytest.raises(CompositionError, match=r"(?s)MODEL.SUPPRESSION.METHOD.*_forward_box"):
        _build(CASCADE, *cascade, "MODEL.SUPPRESSION.METHOD", "soft_nms")
    # Rank-NMS has a Cascade implementation, which applies the suppression
    model = _build(
        CASCADE, *cascade, C + "ROI_HEADS.SCORING", "rank_nms", "MODEL.SUPPRESSION.METHOD",
        "soft_nms", "MODEL.SUPPRESSION.PREFILTER", "hnms", "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "0.0",
    )  # fmt: skip
    assert isinstance(model.roi_heads.box_predictor[-1], RankNMSPredictorMixin)
    assert not isinstance(model.roi_heads.box_predictor[0], RankNMSPredictorMixin)
    model.eval()
    with torch.no_grad():
        out = model(tiny_batch(num_images=1))[0]["instances"]
    assert len(out) > 0 and out.has("rank_scores")


@pytest.mark.parametrize(
    "opts, message",
    [
        ([*ROI, C + "ROI_HEADS.SAMPLER", "ohem"],
         r"MODEL.COMPOSE.ROI_HEADS.SAMPLER must be one of none, overlap_sampler, got 'ohem'"),
        (["MODEL.PROPOSAL_GENERATOR.NAME", "ComposedRPN", C + "RPN.ASSIGNER", "atss"],
         r"MODEL.COMPOSE.RPN.ASSIGNER must be one of none, noisy_anchors, got 'atss'"),
        ([*ROI, "MODEL.SUPPRESSION.METHOD", "softnms"],
         r"MODEL.SUPPRESSION.METHOD must be one of hnms, nms, soft_nms .*got 'softnms'"),
        ([*ROI, "MODEL.SUPPRESSION.PREFILTER", "soft_nms"],
         r"MODEL.SUPPRESSION.PREFILTER must be one of hnms, none .*got 'soft_nms'"),
        ([*ROI, "MODEL.SUPPRESSION.METHOD", "hnms", "MODEL.SUPPRESSION.PREFILTER", "hnms"],
         r"MODEL.SUPPRESSION.PREFILTER = 'hnms' before MODEL.SUPPRESSION.METHOD = 'hnms'"),
        (["MODEL.PROPOSAL_GENERATOR.NAME", "ComposedRPN", "MODEL.SUPPRESSION.RPN.METHOD",
          "soft_nms"], r"MODEL.SUPPRESSION.RPN.METHOD = 'soft_nms' is not supported"),
        ([*ROI, "MODEL.SUPPRESSION.PREFILTER", "hnms", "MODEL.HNMS.PREFILTER.ALPHA", "1.5"],
         r"MODEL.HNMS.PREFILTER.ALPHA must be a number in \(0, 1\)"),
    ],
)  # fmt: skip
def test_bad_names_fail_naming_the_key(opts, message):
    with pytest.raises(ValueError, match=message):
        _build(FASTER, *opts)


@pytest.mark.parametrize(
    "path, opts, message",
    [
        (FASTER, [C + "ROI_HEADS.SAMPLER", "overlap_sampler"],
         r"MODEL.COMPOSE.ROI_HEADS.SAMPLER = 'overlap_sampler' is read only by ComposedROIHeads"),
        (FASTER, [C + "RPN.ASSIGNER", "noisy_anchors"],
         r"MODEL.PROPOSAL_GENERATOR.NAME is 'RPN'"),
        (RETINA, [C + "RETINANET.ASSIGNER", "noisy_anchors"],
         r"MODEL.META_ARCHITECTURE is 'RetinaNet'"),
        (FASTER, ["MODEL.SUPPRESSION.METHOD", "soft_nms"],
         r"MODEL.SUPPRESSION.METHOD = 'soft_nms' is read only by ComposedROIHeads"),
        (FASTER, [*ROI, "MODEL.SUPPRESSION.RPN.METHOD", "hnms"],
         r"MODEL.SUPPRESSION.RPN.METHOD = 'hnms' is read only by ComposedRPN"),
    ],
)  # fmt: skip
def test_keys_no_built_head_reads_fail(path, opts, message):
    cfg = composed_cfg(path, *opts)
    with pytest.raises(ValueError, match=message):
        Trainer.build_model(cfg)


@pytest.mark.parametrize(
    "path, opts, message",
    [
        (FASTER, [*ROI, "MODEL.RANK_NMS.SUPPRESSION", "soft_nms"],
         r"MODEL.RANK_NMS.SUPPRESSION = 'soft_nms' is read only by RankNMSROIHeads"),
        (FASTER, [*ROI, C + "ROI_HEADS.SCORING", "rank_nms", "MODEL.RANK_NMS.SOFT_NMS.METHOD",
                  "gaussian"], r"MODEL.RANK_NMS.SOFT_NMS.METHOD = 'gaussian'.*MODEL.SUPPRESSION"),
        (FASTER, [*ROI, C + "ROI_HEADS.SCORING", "rank_nms", "MODEL.RANK_NMS.OUTPUT_SCORE", "cls",
                  "MODEL.SUPPRESSION.METHOD", "soft_nms"],
         r"MODEL.RANK_NMS.OUTPUT_SCORE = 'cls'.*MODEL.SUPPRESSION.METHOD = 'soft_nms'"),
        (FASTER, [*ROI, "MODEL.HNMS.ROI_HEADS_PREFILTER", "True"],
         r"MODEL.HNMS.ROI_HEADS_PREFILTER = True is read only by HashPrefilterROIHeads"),
        (RETINA, ["MODEL.META_ARCHITECTURE", "ComposedRetinaNet",
                  "MODEL.HNMS.PREFILTER.SUPPRESSION", "soft_nms"],
         r"MODEL.HNMS.PREFILTER.SUPPRESSION = 'soft_nms' is read only by HashPrefilterRetinaNet"),
    ],
)  # fmt: skip
def test_single_method_keys_a_composed_model_would_ignore_fail(path, opts, message):
    with pytest.raises(ValueError, match=message):
        _build(path, *opts)


def test_single_method_heads_beside_a_composed_rpn_keep_their_keys():
    # HashPrefilterROIHeads reads MODEL.HNMS.ROI_HEADS_PREFILTER: no contradiction
    model = _build(
        FASTER, "MODEL.PROPOSAL_GENERATOR.NAME", "ComposedRPN", "MODEL.SUPPRESSION.RPN.METHOD",
        "hnms", "MODEL.ROI_HEADS.NAME", "HashPrefilterROIHeads", "MODEL.HNMS.ROI_HEADS_PREFILTER",
        "True",
    )  # fmt: skip
    assert type(model.roi_heads.box_predictor).__name__ == "HashPrefilterFastRCNNOutputLayers"


def test_composed_heads_need_a_config_or_the_composed_class():
    with pytest.raises(TypeError, match=r"d2kit.composed.compose\(ComposedRPN"):
        ComposedRPN(head=None)


# ---------------------------------------------------------------------------------------------
# The rules a component follows, checked by assemble()
# ---------------------------------------------------------------------------------------------
def _assemble(*mixins):
    return assemble(StandardROIHeads, [(m.__name__, m) for m in mixins])


def test_undeclared_override_fails():
    class Sneaky(Component):
        def _sample_proposals(self, *args):
            return super()._sample_proposals(*args)

    with pytest.raises(CompositionError, match=r"Sneaky overrides StandardROIHeads._sample_pro"):
        _assemble(Sneaky)


def test_declared_hook_must_exist_and_not_be_reserved():
    class Typo(Component):
        claims = ("label_and_sample_proposal",)

    with pytest.raises(CompositionError, match=r"neither as a method nor as a constructor"):
        _assemble(Typo)

    class Forward(Component):
        claims = ("forward",)

    with pytest.raises(CompositionError, match=r"reserves for the composition"):
        _assemble(Forward)


def test_helper_and_argument_clashes_fail_naming_both():
    class A(Component):
        def _helper(self):
            return 1

    class B(Component):
        def _helper(self):
            return 2

    with pytest.raises(CompositionError, match=r"A and B both define _helper"):
        _assemble(A, B)

    class P(Component):
        @configurable
        def __init__(self, *, alpha=1.0, **kwargs):
            super().__init__(**kwargs)

    class Q(Component):
        @configurable
        def __init__(self, *, alpha=2.0, **kwargs):
            super().__init__(**kwargs)

    with pytest.raises(CompositionError, match=r"P and Q both take the constructor argument"):
        _assemble(P, Q)

    class Shadow(Component):
        @configurable
        def __init__(self, *, box_head=None, **kwargs):
            super().__init__(**kwargs)

    with pytest.raises(CompositionError, match=r"without claiming them"):
        _assemble(Shadow)


def test_extenders_run_before_the_owner():
    class Owner(Component):
        claims = ("label_and_sample_proposals",)

    class Wrapper(Component):
        extends = ("label_and_sample_proposals",)

    cls = _assemble(Owner, Wrapper)
    assert cls.__mro__.index(Wrapper) < cls.__mro__.index(Owner)
    assert cls._components == ("Wrapper", "Owner")


def test_a_component_is_a_plain_mixin():
    with pytest.raises(TypeError, match=r"must be a subclass of d2kit.compose.Component"):
        _assemble(object)
    with pytest.raises(TypeError, match=r"a component is a plain mixin"):

        class Module(Component, torch.nn.Module):
            pass

        _assemble(Module)


def test_suppression_default_is_detectron2_nms():
    assert Suppression().is_default
    assert not Suppression(SoftNMS()).is_default
    keep, new_scores = Suppression()(
        torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]]),
        torch.tensor([0.9, 0.8, 0.7]),
        torch.zeros(3, dtype=torch.int64),
        0.5,
    )
    assert keep.tolist() == [0, 2] and new_scores is None


@pytest.mark.parametrize(
    "method, prefilter",
    [("nms", "hnms"), ("soft_nms", "none"), ("soft_nms", "hnms"), ("hnms", "none")],
)
@pytest.mark.parametrize("head", ["roi_heads", "rank_nms", "retinanet"])
def test_every_detection_suppression_runs_in_every_head(head, method, prefilter):
    opts = ["MODEL.SUPPRESSION.METHOD", method, "MODEL.SUPPRESSION.PREFILTER", prefilter]
    opts += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
    if head == "retinanet":
        model = _build(RETINA, "MODEL.META_ARCHITECTURE", "ComposedRetinaNet", *opts)
    else:
        scoring = ["MODEL.RANK_NMS.HEAD.FC_DIM", "64", C + "ROI_HEADS.SCORING", "rank_nms"]
        model = _build(FASTER, *ROI, *opts, *(scoring if head == "rank_nms" else []))
    model.eval()
    with torch.no_grad():
        out = model(tiny_batch(num_images=1))[0]["instances"]
    assert len(out) > 0 and torch.isfinite(out.scores).all()
    if method == "soft_nms":
        assert (out.scores >= 0).all()


@pytest.mark.parametrize("method, prefilter", [("nms", "hnms"), ("hnms", "none")])
def test_every_proposal_suppression_runs_in_the_rpn(method, prefilter):
    model = _build(
        FASTER, "MODEL.PROPOSAL_GENERATOR.NAME", "ComposedRPN", "MODEL.SUPPRESSION.RPN.METHOD",
        method, "MODEL.SUPPRESSION.RPN.PREFILTER", prefilter,
    )  # fmt: skip
    model.train()
    with EventStorage():
        losses = model(tiny_batch())
    assert all(torch.isfinite(v) for v in losses.values())
