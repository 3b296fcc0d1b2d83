"""Datasets: deterministic synthetic generators, loaders for real crowded-scene and RefCOCO data."""

from .builtin import MINI_SUBSET_SIZE, register_referring_datasets, register_synthetic_datasets
from .neon import (
    NEON_TREES_CLASSES,
    NEON_TREES_FILES,
    ensure_neon_trees,
    fetch_neon_trees,
    load_neon_trees,
    neon_trees_layout,
    parse_voc_xml,
    register_neon_trees,
    tile_boxes,
    tile_grid,
)
from .overhead_aug import build_overhead_augmentation
from .real import (
    load_carpk,
    load_crowdhuman_odgt,
    load_sku110k_csv,
    register_carpk,
    register_crowdhuman,
    register_sku110k,
)
from .refcoco import (
    REFER_IMAGE_DIR,
    load_refcoco,
    ref_in_split,
    refcoco_metadata,
    refcoco_splits,
    register_refcoco,
)
from .referring import (
    REFERRING_CLASSES,
    REFERRING_COLOURS,
    REFERRING_GENERIC_NOUNS,
    REFERRING_RELATION_WORDS,
    REFERRING_SIZE_WORDS,
    REFERRING_SPLITS,
    REFERRING_SYNONYMS,
    REFERRING_VOCABULARY,
    SYNTH_REFERRING_DATASET,
    SYNTH_REFERRING_SPEC,
    ReferringDescription,
    ReferringExpression,
    ReferringSpec,
    ensure_synth_referring,
    evaluate_referring_expression,
    generate_referring_scene,
    parse_referring_expression,
    render_referring_expression,
    resolve_referring_expression,
    write_referring_dataset,
)
from .synthetic import SYNTH_SPECS, SynthSpec, ensure_synthetic, generate_image
