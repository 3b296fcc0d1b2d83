"""Datasets: deterministic synthetic generators and loaders for real crowded-scene data."""

from .builtin import MINI_SUBSET_SIZE, register_synthetic_datasets
from .real import (
    load_carpk,
    load_crowdhuman_odgt,
    load_sku110k_csv,
    register_carpk,
    register_crowdhuman,
    register_sku110k,
)
from .synthetic import SYNTH_SPECS, SynthSpec, ensure_synthetic, generate_image
