"""Composition of methods by configuration: one detector, one method per step.

Each method that changes a step of a detector is a small mixin, a :class:`Component`, that
overrides only the hooks of its step and calls ``super()``. A registered ``Composed*`` class
(``ComposedRPN``, ``ComposedRetinaNet``, ``ComposedROIHeads``, ``ComposedCascadeROIHeads``, in
:mod:`d2kit.composed`) reads the component of each step from ``MODEL.COMPOSE.<HEAD>.<STEP>`` and
the suppression from ``MODEL.SUPPRESSION``, and :func:`assemble` builds the class by cooperative
inheritance: ``class X(component_1, ..., component_n, Composed*)``. No class per combination.

Rules (checked by :func:`assemble` when the model is built; see DESIGN.md):

- ``claims``: the hooks whose result the component owns (a method of the Detectron2 base, or an
  argument of its constructor that the component's ``from_config`` sets). At most one
  component per hook: two claims of one hook raise an error naming both components.
- ``extends``: hooks the component wraps, calling ``super()`` and adding to the result. Any
  number may extend one hook; they run outside (before) the component that claims it.
- A component overrides nothing else of the base. Its own helpers and constructor arguments
  must not collide with another component's.
- ``__init__`` (if any) is ``@configurable``, takes its own keyword arguments and passes the rest
  to ``super().__init__``; ``from_config`` calls ``super().from_config`` and adds its own.
- ``applies_suppression``: the component's claimed hook applies the configured suppression
  (the head's ``detection_suppression`` / ``proposal_suppression``); a component that claims a
  head's suppression hook without it cannot be combined with a suppression other than NMS.
- ``predictor_components`` (ROI heads): mixins of the box predictor, composed the same way on
  :class:`d2kit.composed.ComposedOutputLayers`; ``predictor_context(cfg, input_shape)`` gives
  the keyword arguments their ``from_config`` needs from the ROI heads.
"""

from __future__ import annotations

import inspect

from detectron2.config import CfgNode as CN

__all__ = [
    "COMPOSE_STEPS",
    "Component",
    "CompositionError",
    "add_compose_config",
    "assemble",
    "component_names",
    "lookup_component",
    "register_component",
    "register_config_check",
    "run_config_checks",
]

#: The steps a config can choose a component for, per head (keys of MODEL.COMPOSE.<HEAD>).
COMPOSE_STEPS = {
    "RPN": ("ASSIGNER",),
    "RETINANET": ("ASSIGNER",),
    "ROI_HEADS": ("SAMPLER", "SCORING"),
}
#: Value of a MODEL.COMPOSE key that keeps Detectron2's own step.
NONE = "none"


def add_compose_config(cfg: CN) -> None:
    """Add ``MODEL.COMPOSE`` (a component per step) and ``MODEL.SUPPRESSION`` (the suppression
    of every composed head) in place. Read by the ``Composed*`` classes only. Idempotent: keys
    already there keep their values."""
    if "COMPOSE" in cfg.MODEL and "SUPPRESSION" in cfg.MODEL:
        return
    cfg.MODEL.COMPOSE = CN()
    # ComposedRPN (MODEL.PROPOSAL_GENERATOR.NAME): the anchor assignment and its dense losses.
    # "none" (Detectron2's IoU matcher and losses) or "noisy_anchors" (top-N candidates,
    # cleanliness soft labels and re-weighting).
    cfg.MODEL.COMPOSE.RPN = CN()
    cfg.MODEL.COMPOSE.RPN.ASSIGNER = NONE
    # ComposedRetinaNet (MODEL.META_ARCHITECTURE): the same step for RetinaNet.
    cfg.MODEL.COMPOSE.RETINANET = CN()
    cfg.MODEL.COMPOSE.RETINANET.ASSIGNER = NONE
    # ComposedROIHeads / ComposedCascadeROIHeads (MODEL.ROI_HEADS.NAME).
    cfg.MODEL.COMPOSE.ROI_HEADS = CN()
    # The RoI labelling and sampling (and the box losses it weights): "none" or
    # "overlap_sampler".
    cfg.MODEL.COMPOSE.ROI_HEADS.SAMPLER = NONE
    # The RoI scoring and the score the suppression sorts by: "none" (the class probability) or
    # "rank_nms" (ranking subnetwork, fused score s = β·s_r + (1 − β)·s_c).
    cfg.MODEL.COMPOSE.ROI_HEADS.SCORING = NONE

    cfg.MODEL.SUPPRESSION = CN()
    # The per-class suppression of the detections (ComposedROIHeads, ComposedRetinaNet):
    # "nms" (Detectron2's, at <head>.NMS_THRESH_TEST), "soft_nms" (decays the scores; method,
    # σ and threshold in MODEL.HNMS.SOFT_NMS; a linear decay's N_t is the NMS threshold) or
    # "hnms" (hashing NMS alone, α and K of MODEL.HNMS.PREFILTER).
    cfg.MODEL.SUPPRESSION.METHOD = "nms"
    # Run before METHOD: "none" or "hnms" (HNMS pre-filter, §4.3 of the HNMS paper; α and K of
    # MODEL.HNMS.PREFILTER).
    cfg.MODEL.SUPPRESSION.PREFILTER = NONE
    # The per-level suppression of the RPN's proposals (ComposedRPN): "nms" (at
    # MODEL.RPN.NMS_THRESH) or "hnms" (HashRPN's, §4.2: α, K and the per-level cap P2 of
    # MODEL.HNMS.RPN); PREFILTER as above.
    cfg.MODEL.SUPPRESSION.RPN = CN()
    cfg.MODEL.SUPPRESSION.RPN.METHOD = "nms"
    cfg.MODEL.SUPPRESSION.RPN.PREFILTER = NONE


class CompositionError(ValueError):
    """Components that cannot be combined, or a component that breaks the rules."""


class Component:
    """Base of a method's mixin for one step (see the module docstring for the rules)."""

    #: hooks this component owns (methods of the base, or constructor arguments it sets)
    claims: tuple[str, ...] = ()
    #: hooks it wraps with super() (methods of the base)
    extends: tuple[str, ...] = ()
    #: its claimed hook applies the head's configured suppression
    applies_suppression: bool = False
    #: ROI heads only: mixins of the box predictor, composed on ComposedOutputLayers
    predictor_components: tuple[type, ...] = ()

    @classmethod
    def predictor_context(cls, cfg, input_shape) -> dict:
        """Keyword arguments for the ``from_config`` of this component's predictor mixins."""
        return {}

    @classmethod
    def check_composed_config(cls, cfg) -> None:
        """Raise a ValueError naming the keys for settings this component cannot honour in a
        composed model (called when the model is built)."""


# Attributes of Component itself, never counted as overrides.
_COMPONENT_ATTRS = frozenset(vars(Component)) | {"__init__", "from_config"}
# (head, step) -> name -> Detectron2 base class -> mixin
_REGISTRY: dict[tuple[str, str], dict[str, dict[type, type]]] = {}
_CONFIG_CHECKS: list = []
_CACHE: dict[tuple, type] = {}


def register_component(head: str, step: str, name: str, *, base: type):
    """Class decorator: ``name`` selects the mixin for ``MODEL.COMPOSE.<head>.<step>`` when the
    composed head's Detectron2 base is ``base`` (e.g. StandardROIHeads; a method with a separate
    Cascade implementation registers it with ``base=CascadeROIHeads`` under the same name)."""
    if head not in COMPOSE_STEPS or step not in COMPOSE_STEPS[head]:
        valid = ", ".join(f"{h}.{s}" for h, steps in COMPOSE_STEPS.items() for s in steps)
        raise ValueError(f"MODEL.COMPOSE has no step {head}.{step}; steps: {valid}")
    if not name or name == NONE:
        raise ValueError(f"component name must be non-empty and not {NONE!r}, got {name!r}")

    def register(mixin: type) -> type:
        _check_is_component(mixin, f"{head}.{step} = {name!r}")
        by_base = _REGISTRY.setdefault((head, step), {}).setdefault(name, {})
        if base in by_base and by_base[base] is not mixin:
            raise ValueError(
                f"MODEL.COMPOSE.{head}.{step}: {name!r} is already registered for "
                f"{base.__name__} ({by_base[base].__qualname__})"
            )
        by_base[base] = mixin
        return mixin

    return register


def component_names(head: str, step: str) -> list[str]:
    """The registered names of ``MODEL.COMPOSE.<head>.<step>`` (without "none")."""
    return sorted(_REGISTRY.get((head, step), {}))


def lookup_component(head: str, step: str, name: str, base: type, composed_name: str):
    """The mixin that ``MODEL.COMPOSE.<head>.<step> = name`` selects for ``base``; None for
    "none". Raises a ValueError naming the key and the valid names, or naming both the component
    and the composed head when the component is not written for that head."""
    key = f"MODEL.COMPOSE.{head}.{step}"
    if name == NONE:
        return None
    entries = _REGISTRY.get((head, step), {})
    if name not in entries:
        valid = ", ".join([NONE, *component_names(head, step)])
        raise ValueError(
            f"{key} must be one of {valid}, got {name!r}; a component is registered by the "
            "package that provides it, when it is imported (projects' train_net.py and "
            "`python -m d2kit.engine.train_net` import every project)"
        )
    if base not in entries[name]:
        supported = ", ".join(b.__name__ for b in entries[name])
        raise CompositionError(
            f"{key} = {name!r} cannot be combined with {composed_name} (built on "
            f"{base.__name__}): {name!r} is implemented for {supported} only"
        )
    return entries[name][base]


def register_config_check(check) -> None:
    """Register ``check(cfg)``, run whenever a composed head is built: it raises a ValueError
    naming the keys for settings a composed model would otherwise ignore (e.g. a project's own
    suppression keys, read only by its single-method classes)."""
    if check not in _CONFIG_CHECKS:
        _CONFIG_CHECKS.append(check)


def run_config_checks(cfg) -> None:
    for check in _CONFIG_CHECKS:
        check(cfg)


def _check_is_component(mixin, label: str) -> None:
    if not (isinstance(mixin, type) and issubclass(mixin, Component)):
        raise TypeError(f"{label}: a component must be a subclass of d2kit.compose.Component")
    module_base = next((k for k in mixin.__mro__ if k.__module__.startswith("torch.nn")), None)
    if module_base is not None:
        raise TypeError(
            f"{label}: {mixin.__qualname__} derives from {module_base.__name__}; a component is "
            "a plain mixin (the composed class supplies the Detectron2 base)"
        )


def _own_classes(mixin: type) -> list[type]:
    return [k for k in mixin.__mro__ if k not in (Component, object)]


def _defined_names(mixin: type) -> set[str]:
    names = set()
    for klass in _own_classes(mixin):
        for name, value in vars(klass).items():
            if name in _COMPONENT_ATTRS or (name.startswith("__") and name.endswith("__")):
                continue
            if callable(value) or isinstance(value, (classmethod, staticmethod, property)):
                names.add(name)
    return names


def _init_params(init) -> set[str]:
    params = inspect.signature(init).parameters.values()
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - {
        "self"
    }


def _base_init_params(base: type) -> set[str]:
    params = set()
    for klass in base.__mro__:
        init = vars(klass).get("__init__")
        if init is not None and klass is not object:
            params |= _init_params(init)
    return params


def _own_init_params(mixin: type) -> set[str]:
    params = set()
    for klass in _own_classes(mixin):
        init = vars(klass).get("__init__")
        if init is not None:
            params |= _init_params(init)
    return params


def _check_rules(base: type, label: str, mixin: type, reserved: tuple[str, ...]) -> None:
    _check_is_component(mixin, label)
    base_params = _base_init_params(base)
    for hook in (*mixin.claims, *mixin.extends):
        if hook in reserved:
            raise CompositionError(
                f"{label} declares {hook!r}, which {base.__name__} reserves for the composition "
                f"(a component never overrides {', '.join(reserved)})"
            )
        if not hasattr(base, hook) and hook not in base_params:
            raise CompositionError(
                f"{label} declares the hook {hook!r}, which {base.__name__} has neither as a "
                "method nor as a constructor argument"
            )
    for hook in mixin.extends:
        if not callable(getattr(base, hook, None)):
            raise CompositionError(f"{label} extends {hook!r}, which is not a method to wrap")
    declared = set(mixin.claims) | set(mixin.extends)
    for name in sorted(_defined_names(mixin)):
        if hasattr(base, name) and name not in declared:
            raise CompositionError(
                f"{label} overrides {base.__name__}.{name} without declaring it; add it to the "
                "component's claims (it owns the result) or extends (it wraps super())"
            )
    for klass in _own_classes(mixin):
        init = vars(klass).get("__init__")
        if init is not None and not hasattr(init, "__wrapped__"):
            raise CompositionError(
                f"{label}: {klass.__qualname__}.__init__ must be @configurable (the composed "
                "class is built from a config)"
            )
    shadowed = (_own_init_params(mixin) & base_params) - set(mixin.claims)
    if shadowed:
        raise CompositionError(
            f"{label} takes the constructor argument(s) {sorted(shadowed)} of {base.__name__} "
            "without claiming them"
        )


def _order(components: list[tuple[str, type]]) -> list[tuple[str, type]]:
    """Stable order in which every component that extends a hook comes before the one that
    claims it (so the wrapper calls the owner through super())."""
    remaining = list(components)
    ordered = []
    while remaining:
        for i, (_, mixin) in enumerate(remaining):
            blockers = [
                other
                for other in remaining
                if other[1] is not mixin and set(other[1].extends) & set(mixin.claims)
            ]
            if not blockers:
                ordered.append(remaining.pop(i))
                break
        else:
            names = " and ".join(label for label, _ in remaining)
            raise CompositionError(f"{names} extend hooks the other claims; no order works")
    return ordered


def assemble(
    base: type,
    components: list[tuple[str, type]],
    *,
    name: str | None = None,
    reserved: tuple[str, ...] = ("forward",),
    attrs: dict | None = None,
) -> type:
    """The class ``(component_1, ..., component_n, base)``, after checking the rules.

    Args:
        base: the class the components are mixed into (a ``Composed*`` class or a predictor).
        components: (label, mixin) pairs; the label names the component in errors, e.g.
            "MODEL.COMPOSE.ROI_HEADS.SAMPLER = 'overlap_sampler'".
        name: the class name (default: the base's name and the components', joined by "_"; a
            Python identifier, as an exported (traced) model needs).
        reserved: hooks of ``base`` no component may declare or override.
        attrs: extra class attributes of the result.
    Raises:
        CompositionError naming both components when two claim one hook or define one helper
        or constructor argument, and naming the component when it breaks a rule.
    """
    for label, mixin in components:
        _check_rules(base, label, mixin, reserved)
    for i, (label_a, a) in enumerate(components):
        for label_b, b in components[i + 1 :]:
            if a is b:
                raise CompositionError(f"{label_a} and {label_b} are the same component")
            both = set(a.claims) & set(b.claims)
            if both:
                raise CompositionError(
                    f"{label_a} and {label_b} both claim {', '.join(sorted(both))} of "
                    f"{base.__name__}; choose one of them for this step"
                )
            helpers = (_defined_names(a) & _defined_names(b)) - {
                n for n in _defined_names(a) if hasattr(base, n)
            }
            if helpers:
                raise CompositionError(
                    f"{label_a} and {label_b} both define {', '.join(sorted(helpers))}; a "
                    "component's own helpers must have names no other component uses"
                )
            params = _own_init_params(a) & _own_init_params(b)
            if params:
                raise CompositionError(
                    f"{label_a} and {label_b} both take the constructor argument(s) "
                    f"{', '.join(sorted(params))}"
                )
    ordered = _order(list(components))
    mixins = tuple(mixin for _, mixin in ordered)
    key = (base, mixins, tuple(sorted((attrs or {}).items(), key=lambda kv: kv[0])))
    try:
        cached = _CACHE.get(key)
    except TypeError:  # unhashable attrs: no caching
        key, cached = None, None
    if cached is not None:
        return cached
    if name is None:
        parts = [m.__name__ for m in mixins]
        # a Python identifier: TorchScript names the classes of a traced model after it
        name = "_".join([base.__name__, *parts])
    namespace = {
        "__module__": base.__module__,
        "__qualname__": name,
        "_components": tuple(label for label, _ in ordered),
        "_component_classes": mixins,
        **(attrs or {}),
    }
    cls = type(name, (*mixins, base), namespace)
    if key is not None:
        _CACHE[key] = cls
    return cls
