"""Augmentation (the report's step 8): the albumentations pipeline, the offline set, CutMix and MixUp.

``pipeline`` declares the report's seven transforms and seeds them per image (docs/augmentation.md);
``offline`` writes the augmented set once, ``manifest`` lists its files with their sha256; ``mixing`` holds
CutMix and MixUp. This package does not import TensorFlow or Keras: its workers run in spawned processes.
"""

from carclf.augment.manifest import AugmentedSet, read_manifest
from carclf.augment.mixing import CUTMIX_ALPHA, MIXUP_ALPHA, BatchMixer, batch_mixer, cutmix, cutmix_box, mixup
from carclf.augment.offline import STAGE, build_augmented_set, source_fingerprint
from carclf.augment.pipeline import (
    MODERN_CROP,
    PIPELINES,
    REPORT_1_3,
    REPORT_PIPELINE,
    OnlineAugment,
    augment_image,
    build_pipeline,
    pipeline_for,
    seed_pipeline,
)

__all__ = [
    "AugmentedSet",
    "BatchMixer",
    "CUTMIX_ALPHA",
    "MIXUP_ALPHA",
    "MODERN_CROP",
    "OnlineAugment",
    "PIPELINES",
    "REPORT_1_3",
    "REPORT_PIPELINE",
    "STAGE",
    "augment_image",
    "batch_mixer",
    "build_augmented_set",
    "build_pipeline",
    "cutmix",
    "cutmix_box",
    "mixup",
    "pipeline_for",
    "read_manifest",
    "seed_pipeline",
    "source_fingerprint",
]
