"""d2kit: what the five projects share and is not a paper.

Importing it registers the synthetic datasets (``synth_shapes_*``, ``synth_crowd_*``) with
Detectron2's ``DatasetCatalog``/``MetadataCatalog``; they are generated on first use. It also
registers the composed heads (``ComposedRPN``, ``ComposedRetinaNet``, ``ComposedROIHeads``,
``ComposedCascadeROIHeads``; see :mod:`d2kit.compose`).
"""

from . import composed as _composed  # noqa: F401  (registers the Composed* heads)
from .data import register_synthetic_datasets
from .paths import CONFIGS_ROOT, REPO_ROOT, datasets_root, resolve_config_file

register_synthetic_datasets()
