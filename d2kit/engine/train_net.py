"""The train_net skeleton every project shares (detectron2's ``tools/train_net.py`` shape).

A project's ``projects/<Name>/train_net.py`` is a few lines::

    import hnms
    from d2kit.engine import train_net

    def main(args):
        return train_net.main(args, config_fns=[hnms.add_hnms_config])

    if __name__ == "__main__":
        train_net.invoke_main(main)

Run on its own it adds the keys of every project (:func:`d2kit.projects.project_config_fns`) and
takes the Trainer a project names for the config's META_ARCHITECTURE (Ref-NMS's;
:func:`d2kit.projects.project_trainer`), so it trains the baselines, every project's configs and
the composed configs, which use several projects at once::

    python -m d2kit.engine.train_net --config-file configs/quick_schedules/<config>.yaml
    python -m d2kit.engine.train_net --config-file configs/Composed/quick_schedules/<config>.yaml

Installed as a package, the same is the console script ``d2kit-train`` (:func:`cli`), with config
names relative to ``configs/`` (shipped in the package) and ``OUTPUT_DIR`` relative to the current
directory::

    d2kit-train --config-file quick_schedules/faster_rcnn_R_18_FPN_quick_synth_shapes.yaml

Flags are detectron2's (``default_argument_parser``): ``--config-file``, ``--resume``,
``--eval-only``, ``--num-gpus`` (on a machine without GPUs, N > 1 starts N gloo CPU workers),
``--num-machines``, ``--machine-rank``, ``--dist-url``, then ``KEY VALUE`` config overrides.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

import d2kit  # noqa: F401  (registers the datasets)

from ..config import add_d2kit_config
from ..paths import resolve_config_file
from .trainer import Trainer

__all__ = ["load_config", "setup", "main", "invoke_main", "cli", "RESULTS_FILE"]

logger = logging.getLogger(__name__)

#: File under OUTPUT_DIR where ``main`` writes the final evaluation results (main process).
RESULTS_FILE = "final_results.json"


def load_config(config_file: str, opts, config_fns: Iterable[Callable] = ()):
    """The (unfrozen) config: defaults, the shared keys (:func:`d2kit.config.add_d2kit_config`),
    each project's keys, the YAML (a path or a name under ``configs/``), then ``opts``."""
    cfg = get_cfg()
    add_d2kit_config(cfg)
    for add_config in config_fns:
        add_config(cfg)
    cfg.merge_from_file(resolve_config_file(config_file))
    cfg.merge_from_list(list(opts))
    return cfg


def setup(args, config_fns: Iterable[Callable] = ()):
    """Build the frozen config (:func:`load_config`) and set up logging and ``OUTPUT_DIR``.

    A config that asks for CUDA on a machine without a GPU runs on the CPU (with a warning).
    """
    # resolved in place: default_setup logs and copies args.config_file
    args.config_file = resolve_config_file(args.config_file)
    cfg = load_config(args.config_file, args.opts, config_fns)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but no GPU is visible: using the CPU.", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def _to_builtin(obj):
    if isinstance(obj, dict):
        return {k: _to_builtin(v) for k, v in obj.items()}
    return float(obj) if hasattr(obj, "__float__") else obj


def main(args, config_fns: Iterable[Callable] = (), trainer_cls=Trainer):
    """Train (or, with ``--eval-only``, evaluate) and return the evaluation results.

    Returns:
        detectron2's results dict, e.g. ``{"bbox": {"AP": ..., "AP50": ...}}`` for one test set
        or ``{dataset_name: {...}}`` for several; ``{}`` on non-main processes.
    """
    cfg = setup(args, config_fns)
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = trainer_cls.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
    else:
        trainer = trainer_cls(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    if comm.is_main_process() and results:
        with open(os.path.join(cfg.OUTPUT_DIR, RESULTS_FILE), "w") as f:
            json.dump(_to_builtin(results), f, indent=2)
    return results


def invoke_main(main_fn: Callable, argv: list[str] | None = None) -> None:
    """Parse detectron2's standard flags and ``launch`` ``main_fn`` on every worker."""
    args = default_argument_parser().parse_args(argv)
    logger.info("Command line arguments: %s", args)
    launch(
        main_fn,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def _baseline_main(args):
    """Every project's keys; the Trainer the config's META_ARCHITECTURE needs (e.g. Ref-NMS's),
    else the shared one."""
    from ..projects import project_config_fns, project_trainer

    config_fns = project_config_fns()
    cfg = load_config(args.config_file, args.opts, config_fns)
    trainer_cls = project_trainer(cfg.MODEL.META_ARCHITECTURE) or Trainer
    return main(args, config_fns=config_fns, trainer_cls=trainer_cls)


def cli(argv: list[str] | None = None) -> None:
    """The ``d2kit-train`` console script: train or evaluate with every installed project's
    config keys (detectron2's ``train_net`` flags; ``argv`` defaults to ``sys.argv[1:]``)."""
    invoke_main(_baseline_main, argv)


if __name__ == "__main__":
    cli()  # pragma: no cover
