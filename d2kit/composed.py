"""The registered composed heads: one name per head, assembled from ``MODEL.COMPOSE``.

- ``ComposedRPN`` (``MODEL.PROPOSAL_GENERATOR.NAME``): step ASSIGNER; suppression
  ``MODEL.SUPPRESSION.RPN``, applied in ``predict_proposals``.
- ``ComposedRetinaNet`` (``MODEL.META_ARCHITECTURE``): step ASSIGNER; suppression
  ``MODEL.SUPPRESSION``, applied in ``inference_single_image``.
- ``ComposedROIHeads`` (``MODEL.ROI_HEADS.NAME``, Faster / Mask R-CNN): steps SAMPLER and
  SCORING; suppression ``MODEL.SUPPRESSION``, applied in the box predictor's ``inference``.
- ``ComposedCascadeROIHeads``: the same steps on Cascade R-CNN, for the components that have a
  Cascade implementation; Cascade applies its suppression in ``_forward_box``, which only a
  component can take over.

With every step "none" and NMS, each is Detectron2's class: the same modules, created in the
same order, and Detectron2's own code paths (the tests check losses and detections).
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    CascadeROIHeads,
    FastRCNNOutputLayers,
    StandardROIHeads,
)

from .compose import (
    COMPOSE_STEPS,
    NONE,
    CompositionError,
    assemble,
    lookup_component,
    run_config_checks,
)
from .suppression import (
    Suppression,
    build_suppression,
    dense_detections,
    fast_rcnn_detections,
    find_top_proposals,
    suppression_keys,
)

__all__ = [
    "ComposedCascadeROIHeads",
    "ComposedHead",
    "ComposedOutputLayers",
    "ComposedROIHeads",
    "ComposedRPN",
    "ComposedRetinaNet",
    "check_composition_is_used",
    "compose",
]


def _cfg_argument(args, kwargs):
    if args and isinstance(args[0], CfgNode):
        return args[0]
    return kwargs.get("cfg") if isinstance(kwargs.get("cfg"), CfgNode) else None


class ComposedHead:
    """What the registered ``Composed*`` classes share: assembly from the config.

    ``Composed*(cfg, ...)`` builds the class of the components ``MODEL.COMPOSE.<node>.*`` names
    (:func:`compose`), then an instance of it. The assembled class is a subclass, so
    ``isinstance(head, ComposedROIHeads)`` holds; to build one from keyword arguments, take the
    class from :func:`compose` and call it with them.
    """

    #: key of MODEL.COMPOSE this head reads
    compose_node = ""
    #: the Detectron2 class the components are written for
    detectron2_base: type = object
    #: the hook that applies the suppression, and which suppression (d2kit.suppression.HEADS)
    suppression_hook = ""
    suppression_head = "detections"
    #: hooks no component may take (the composition needs them)
    reserved_hooks: tuple[str, ...] = ("forward",)
    #: the labels and classes of the components of an assembled class (None: not assembled)
    _components: tuple[str, ...] | None = None
    _component_classes: tuple[type, ...] = ()

    def __new__(cls, *args, **kwargs):
        if "_components" not in vars(cls):  # the registered name: assemble from the config
            cfg = _cfg_argument(args, kwargs)
            if cfg is None:
                raise TypeError(
                    f"{cls.__name__} assembles its class from a config; to build it from keyword "
                    f"arguments use d2kit.composed.compose({cls.__name__}, {{step: name}})(...)"
                )
            cls = compose(cls, _steps_of(cfg, cls.compose_node))
        return super().__new__(cls)  # the assembled class (zero-argument super reads cls now)

    @classmethod
    def _check_config(cls, cfg) -> None:
        check_composition_is_used(cfg)
        run_config_checks(cfg)
        for component in cls._component_classes:
            component.check_composed_config(cfg)

    @classmethod
    def _build_suppression(cls, cfg, owners=None) -> Suppression:
        """The configured suppression, after checking that the component owning the hook that
        applies it (if any) applies it. ``owners``: (label, component) pairs that may own the
        hook (default: the head's components)."""
        suppression = build_suppression(cfg, cls.suppression_head)
        if owners is None:
            owners = list(zip(cls._components or (), cls._component_classes))
        for label, component in owners:
            claimed = cls.suppression_hook in component.claims
            if claimed and not suppression.is_default and not component.applies_suppression:
                raise CompositionError(
                    f"{suppression_keys(cls.suppression_head)[0]} selects {suppression!r}, but "
                    f"{label} owns {cls.suppression_hook} and does not apply the configured "
                    "suppression; use nms with it"
                )
        return suppression


def _steps_of(cfg, node: str) -> dict:
    if "COMPOSE" not in cfg.MODEL:
        raise ValueError(
            "MODEL.COMPOSE is missing from the config: add the shared keys with "
            "d2kit.config.add_d2kit_config(cfg) before merging the YAML"
        )
    return {step: cfg.MODEL.COMPOSE[node][step] for step in COMPOSE_STEPS[node]}


def compose(head_cls: type, steps: dict) -> type:
    """The class of ``head_cls`` (a registered ``Composed*`` class) with a component per step.

    Args:
        steps: {step: name}, e.g. ``{"SAMPLER": "overlap_sampler", "SCORING": "rank_nms"}``;
            missing steps and "none" keep Detectron2's step.
    """
    node = head_cls.compose_node
    unknown = set(steps) - set(COMPOSE_STEPS[node])
    if unknown:
        raise ValueError(
            f"MODEL.COMPOSE.{node} has no step(s) {sorted(unknown)}; steps: "
            f"{', '.join(COMPOSE_STEPS[node])}"
        )
    components = []
    for step in COMPOSE_STEPS[node]:
        name = steps.get(step, NONE)
        mixin = lookup_component(node, step, name, head_cls.detectron2_base, head_cls.__name__)
        if mixin is not None:
            components.append((f"MODEL.COMPOSE.{node}.{step} = {name!r}", mixin))
    return assemble(head_cls, components, reserved=head_cls.reserved_hooks)


# ---------------------------------------------------------------------------------------------
# RPN
# ---------------------------------------------------------------------------------------------
@PROPOSAL_GENERATOR_REGISTRY.register()
class ComposedRPN(ComposedHead, RPN):
    """Detectron2's RPN with a component for the anchor assignment and losses
    (``MODEL.COMPOSE.RPN.ASSIGNER``) and the suppression of ``MODEL.SUPPRESSION.RPN``."""

    compose_node = "RPN"
    detectron2_base = RPN
    suppression_hook = "predict_proposals"
    suppression_head = "rpn"

    @configurable
    def __init__(self, *, proposal_suppression: Suppression | None = None, **kwargs):
        """
        Args:
            proposal_suppression: per-level suppression of the proposals (None: NMS at
                ``nms_thresh``, Detectron2's code path).
            kwargs: the arguments of Detectron2's RPN.
        """
        super().__init__(**kwargs)
        self.proposal_suppression = proposal_suppression or Suppression()

    @classmethod
    def from_config(cls, cfg, input_shape):
        cls._check_config(cfg)
        ret = super().from_config(cfg, input_shape)
        ret["proposal_suppression"] = cls._build_suppression(cfg)
        return ret

    def predict_proposals(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes):
        """Detectron2's for NMS; otherwise its selection with the configured suppression per
        level (then at most P2 per level, when the suppression sets it)."""
        if self.proposal_suppression.is_default:
            return super().predict_proposals(
                anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes
            )
        with torch.no_grad():
            pred_proposals = self._decode_proposals(anchors, pred_anchor_deltas)
            return find_top_proposals(
                pred_proposals,
                pred_objectness_logits,
                image_sizes,
                self._suppress_proposals,
                self.pre_nms_topk[self.training],
                self.post_nms_topk[self.training],
                self.min_box_size,
                self.training,
                post_topk_per_level=self.proposal_suppression.post_topk_per_level[
                    0 if self.training else 1
                ],
            )

    def _suppress_proposals(self, boxes, scores, levels):
        return self.proposal_suppression(boxes, scores, levels, self.nms_thresh)[0]


# ---------------------------------------------------------------------------------------------
# RetinaNet
# ---------------------------------------------------------------------------------------------
@META_ARCH_REGISTRY.register()
class ComposedRetinaNet(ComposedHead, RetinaNet):
    """Detectron2's RetinaNet with a component for the anchor assignment and losses
    (``MODEL.COMPOSE.RETINANET.ASSIGNER``) and the suppression of ``MODEL.SUPPRESSION``."""

    compose_node = "RETINANET"
    detectron2_base = RetinaNet
    suppression_hook = "inference_single_image"
    reserved_hooks = ("forward", "forward_training", "forward_inference")

    @configurable
    def __init__(self, *, detection_suppression: Suppression | None = None, **kwargs):
        """
        Args:
            detection_suppression: per-class suppression of the detections (None: NMS at
                ``test_nms_thresh``, Detectron2's code path).
            kwargs: the arguments of Detectron2's RetinaNet.
        """
        super().__init__(**kwargs)
        self.detection_suppression = detection_suppression or Suppression()

    @classmethod
    def from_config(cls, cfg):
        cls._check_config(cfg)
        ret = super().from_config(cfg)
        ret["detection_suppression"] = cls._build_suppression(cfg)
        return ret

    def inference_single_image(self, anchors, box_cls, box_delta, image_size):
        """Detectron2's for NMS; otherwise its decoding with the configured suppression."""
        if self.detection_suppression.is_default:
            return super().inference_single_image(anchors, box_cls, box_delta, image_size)
        return dense_detections(
            self, anchors, box_cls, box_delta, image_size, self._suppress_detections
        )

    def _suppress_detections(self, boxes, scores, classes):
        suppression = self.detection_suppression
        if not suppression.decays_scores:
            return suppression(boxes, scores, classes, self.test_nms_thresh)
        # Soft-NMS outputs each class's best box whatever its score: apply its threshold first.
        ok = torch.nonzero((scores > 0) & (scores >= suppression.score_threshold)).flatten()
        keep, new_scores = suppression(boxes[ok], scores[ok], classes[ok], self.test_nms_thresh)
        return ok[keep], new_scores


# ---------------------------------------------------------------------------------------------
# ROI heads and their box predictor
# ---------------------------------------------------------------------------------------------
class ComposedOutputLayers(FastRCNNOutputLayers):
    """Detectron2's box predictor, the base the predictor mixins are composed on.

    ``inference`` is Detectron2's for NMS, and otherwise applies ``detection_suppression``
    (:func:`d2kit.suppression.fast_rcnn_detections`). ``from_config`` accepts the ROI heads'
    context keywords (and Detectron2 predictor arguments to override, e.g.
    ``box2box_transform``) that no mixin consumed.
    """

    @configurable
    def __init__(self, *args, detection_suppression: Suppression | None = None, **kwargs):
        """
        Args:
            detection_suppression: per-class suppression (None: Detectron2's NMS; a mixin that
                owns ``inference`` may then use its own).
            args, kwargs: the arguments of ``FastRCNNOutputLayers``.
        """
        super().__init__(*args, **kwargs)
        self.detection_suppression = detection_suppression

    @classmethod
    def from_config(cls, cfg, input_shape, **extra):
        ret = super().from_config(cfg, input_shape)
        ret.update(extra)
        return ret

    def inference(self, predictions, proposals):
        """Same inputs and outputs as ``FastRCNNOutputLayers.inference``."""
        suppression = self.detection_suppression
        if suppression is None or suppression.is_default:
            return super().inference(predictions, proposals)
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        out = [
            fast_rcnn_detections(
                b,
                s,
                p.image_size,
                self.test_score_thresh,
                self.test_nms_thresh,
                self.test_topk_per_image,
                suppression,
            )
            for b, s, p in zip(boxes, scores, proposals)
        ]
        return [r for r, _ in out], [i for _, i in out]


class _ComposedROIHeadsBase(ComposedHead):
    compose_node = "ROI_HEADS"
    suppression_head = "detections"
    reserved_hooks = ("forward", "_init_box_head")

    @classmethod
    def from_config(cls, cfg, input_shape):
        cls._check_config(cfg)
        return super().from_config(cfg, input_shape)

    @classmethod
    def _predictor_parts(cls, cfg, input_shape):
        """(predictor mixins with labels, their from_config context) of the components."""
        mixins, context = [], {}
        for label, component in zip(cls._components or (), cls._component_classes):
            for mixin in component.predictor_components:
                mixins.append((f"{label} (box predictor: {mixin.__name__})", mixin))
            for key, value in component.predictor_context(cfg, input_shape).items():
                if key in context:
                    raise CompositionError(
                        f"{label} and another component both pass {key!r} to the box predictor"
                    )
                context[key] = value
        return mixins, context


@ROI_HEADS_REGISTRY.register()
class ComposedROIHeads(_ComposedROIHeadsBase, StandardROIHeads):
    """Detectron2's StandardROIHeads (Faster / Mask R-CNN) with a component for the RoI
    sampling (``MODEL.COMPOSE.ROI_HEADS.SAMPLER``) and for the RoI scoring
    (``MODEL.COMPOSE.ROI_HEADS.SCORING``), and the suppression of ``MODEL.SUPPRESSION``.

    The box predictor is composed the same way: the components' ``predictor_components`` on
    :class:`ComposedOutputLayers`. With no predictor component and NMS it stays Detectron2's
    ``FastRCNNOutputLayers``.
    """

    detectron2_base = StandardROIHeads
    suppression_hook = "inference"

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        mixins, context = cls._predictor_parts(cfg, input_shape)
        suppression = cls._build_suppression(cfg, owners=mixins)
        if not mixins and suppression.is_default:
            return ret  # Detectron2's predictor
        predictor_cls = assemble(ComposedOutputLayers, mixins, reserved=())
        ret["box_predictor"] = predictor_cls(
            cfg, ret["box_head"].output_shape, detection_suppression=suppression, **context
        )
        return ret


@ROI_HEADS_REGISTRY.register()
class ComposedCascadeROIHeads(_ComposedROIHeadsBase, CascadeROIHeads):
    """Detectron2's CascadeROIHeads with the components that have a Cascade implementation
    (registered with ``base=CascadeROIHeads``); their predictor mixins go on the last stage.

    Cascade suppresses in ``_forward_box`` (the scores averaged over the stages): a suppression
    other than NMS needs a component that owns that hook and applies it.
    """

    detectron2_base = CascadeROIHeads
    suppression_hook = "_forward_box"

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        mixins, context = cls._predictor_parts(cfg, input_shape)
        suppression = cls._build_suppression(cfg)
        owner = [c for c in cls._component_classes if "_forward_box" in c.claims]
        if not suppression.is_default and not owner:
            raise CompositionError(
                f"{suppression_keys('detections')[0]} selects {suppression!r}, but "
                "ComposedCascadeROIHeads applies a suppression other than NMS only through a "
                "component that owns Cascade's inference (_forward_box), e.g. "
                "MODEL.COMPOSE.ROI_HEADS.SCORING 'rank_nms'; the selected components do not"
            )
        if not mixins and suppression.is_default:
            return ret
        last = ret["box_predictors"][-1]
        predictor_cls = assemble(ComposedOutputLayers, mixins, reserved=())
        ret["box_predictors"][-1] = predictor_cls(
            cfg,
            ret["box_heads"][-1].output_shape,
            box2box_transform=last.box2box_transform,
            detection_suppression=suppression,
            **context,
        )
        return ret


# ---------------------------------------------------------------------------------------------
# Keys that no built head reads
# ---------------------------------------------------------------------------------------------
_READERS = {
    "RPN": ("MODEL.PROPOSAL_GENERATOR.NAME", ("ComposedRPN",)),
    "RETINANET": ("MODEL.META_ARCHITECTURE", ("ComposedRetinaNet",)),
    "ROI_HEADS": ("MODEL.ROI_HEADS.NAME", ("ComposedROIHeads", "ComposedCascadeROIHeads")),
}


def _value(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_composition_is_used(cfg) -> None:
    """Raise a ValueError for a ``MODEL.COMPOSE`` or ``MODEL.SUPPRESSION`` key that is set but
    read by no head the config builds (e.g. a sampler for ``StandardROIHeads``), naming the key
    and the setting to change. Called by the composed heads and the shared Trainer."""
    if "COMPOSE" not in cfg.MODEL or "SUPPRESSION" not in cfg.MODEL:
        return
    used = {node: _value(cfg, key) in names for node, (key, names) in _READERS.items()}
    for node, steps in COMPOSE_STEPS.items():
        key, names = _READERS[node]
        for step in steps:
            value = cfg.MODEL.COMPOSE[node][step]
            if value != NONE and not used[node]:
                raise ValueError(
                    f"MODEL.COMPOSE.{node}.{step} = {value!r} is read only by "
                    f"{' / '.join(names)}, but {key} is {_value(cfg, key)!r}: set {key} to "
                    f"{names[0]} or MODEL.COMPOSE.{node}.{step} to 'none'"
                )
    sup = cfg.MODEL.SUPPRESSION
    detections_used = used["ROI_HEADS"] or used["RETINANET"]
    for head, node, ok, readers in (
        ("detections", sup, detections_used, "ComposedROIHeads / ComposedRetinaNet"),
        ("rpn", sup.RPN, used["RPN"], "ComposedRPN"),
    ):
        method_key, prefilter_key = suppression_keys(head)
        for key, value, default in (
            (method_key, node.METHOD, "nms"),
            (prefilter_key, node.PREFILTER, NONE),
        ):
            if value != default and not ok:
                raise ValueError(
                    f"{key} = {value!r} is read only by {readers}, which this config does not "
                    f"build; select one (e.g. MODEL.ROI_HEADS.NAME ComposedROIHeads) or set "
                    f"{key} to {default!r}"
                )
