"""The report's albumentations pipeline, declared once, seeded per image (docs/augmentation.md)."""

from __future__ import annotations

import os

# albumentations 2.0.x asks PyPI for a newer release at import (a 2 s timeout
# offline, and a warning either way); nothing in carclf wants that.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import random  # noqa: E402
import threading  # noqa: E402

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from carclf.cache import canonical, canonical_json  # noqa: E402
from carclf.settings import non_negative_int  # noqa: E402

__all__ = [
    "OnlineAugment",
    "PIPELINES",
    "REPORT_1_3",
    "REPORT_PIPELINE",
    "augment_image",
    "augment_with",
    "build_pipeline",
    "MODERN_CROP",
    "cached_pipeline",
    "check_declaration",
    "pipeline_for",
    "check_seed",
    "seed_pipeline",
]

# THE PIPELINE: the one place to edit it. The report's seven transforms (albumentations 1.3.1), in its
# order and with its probabilities, written for albumentations 2.0.8; docs/augmentation.md maps each one.

REPORT_PIPELINE: tuple = (
    ("HorizontalFlip", {"p": 0.5}),
    ("RandomBrightnessContrast", {"brightness_limit": 0.2, "contrast_limit": 0.2, "p": 0.2}),
    ("Rotate", {"limit": 12, "border_mode": cv2.BORDER_REFLECT_101, "p": 0.5}),
    ("Affine", {"translate_percent": (-0.05, 0.05), "scale": (0.95, 1.05), "rotate": (-4, 4), "keep_ratio": True,
                "border_mode": cv2.BORDER_REFLECT_101, "p": 0.2}),
    ("GaussianBlur", {"blur_limit": (3, 5), "sigma_limit": (0.8, 1.1), "p": 0.6}),
    ("HueSaturationValue", {"hue_shift_limit": 10, "sat_shift_limit": 20, "val_shift_limit": 10, "p": 0.3}),
    ("GridDistortion", {"num_steps": 5, "distort_limit": 0.2, "normalized": False,
                        "border_mode": cv2.BORDER_REFLECT_101, "p": 0.2}),
)  # fmt: skip

#: The report's 1.3.1 spelling of each entry of REPORT_PIPELINE, in order (for tables and the notebook).
REPORT_1_3: tuple = (
    "HorizontalFlip(p=0.5)",
    "RandomBrightnessContrast(p=0.2)",
    "Rotate(limit=12, p=0.5)",
    "ShiftScaleRotate(shift_limit=0.05, scale_limit=0.05, rotate_limit=4, p=0.2)",
    "GaussianBlur(blur_limit=(3, 5), p=0.6)",
    "HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.3)",
    "GridDistortion(num_steps=5, distort_limit=0.2, p=0.2)",
)


#: The pipelines a run's ``augment.pipeline`` setting names that do not depend on the image size.
PIPELINES = {"report": REPORT_PIPELINE}

#: The modern recipe's first transform (fastai's ``RandomResizedCrop(min_scale=0.35)``; timm's 0.08 would
#: often cut away what tells two cars apart), resized back to the training size.
MODERN_CROP = {"scale": (0.35, 1.0), "ratio": (3 / 4, 4 / 3), "p": 1.0}


def pipeline_for(name, image_size, crop_scale=None) -> tuple:
    """The declaration ``augment.pipeline=name`` means for ``(height, width)`` images: ``"report"`` (the
    report's seven transforms) or ``"modern"`` (a random resized crop keeping ``crop_scale`` to all of the
    image, default :data:`MODERN_CROP`'s, then the same seven)."""
    if name == "modern":
        size = tuple(int(v) for v in image_size[:2])
        crop = dict(MODERN_CROP)
        if crop_scale is not None:
            crop["scale"] = (float(crop_scale), 1.0)
        return (("RandomResizedCrop", {"size": size, **crop}), *REPORT_PIPELINE)
    if name not in PIPELINES:
        raise ValueError(f"augment.pipeline must be one of {[*PIPELINES, 'modern']}, got {name!r}")
    return PIPELINES[name]


def check_declaration(declaration):
    try:
        entries = [(str(name), dict(kwargs)) for name, kwargs in declaration]
    except (TypeError, ValueError):
        raise ValueError(
            f"a pipeline is a sequence of (transform name, kwargs) pairs, got {declaration!r:.200}"
        ) from None
    for name, _ in entries:
        if not isinstance(getattr(A, name, None), type):
            raise ValueError(f"albumentations {A.__version__} has no transform {name!r}")
    return entries


def build_pipeline(declaration=REPORT_PIPELINE) -> A.Compose:
    """``A.Compose`` of the declared transforms, in order (default: the report's)."""
    return A.Compose([getattr(A, name)(**kwargs) for name, kwargs in check_declaration(declaration)])


def seed_pipeline(pipeline: A.Compose, *entropy) -> A.Compose:
    """Seed ``pipeline`` for one image from non-negative ints (e.g. seed, row, variant).

    One numpy and one Python generator, both derived from ``entropy``, are
    shared by every transform (see the module note on why not ``set_random_seed``).
    """
    generator = np.random.default_rng([int(e) for e in entropy])
    pipeline.set_random_state(generator, random.Random(int(generator.integers(2**63))))
    return pipeline


_local = threading.local()


def cached_pipeline(declaration) -> A.Compose:
    """This thread's Compose for ``declaration`` (a Compose's random state is not thread-safe)."""
    text = canonical_json(declaration)
    pipelines = getattr(_local, "pipelines", None)
    if pipelines is None:
        pipelines = _local.pipelines = {}
    if text not in pipelines:
        pipelines[text] = build_pipeline(declaration)
    return pipelines[text]


def augment_with(pipeline, image, seed, row, variant):
    return seed_pipeline(pipeline, seed, row, variant)(image=image)["image"]


def augment_image(image, seed=0, row=0, variant=0, pipeline=REPORT_PIPELINE) -> np.ndarray:
    """One augmented variant of a uint8 RGB ``image``; a function of (seed, row, variant) only.

    The offline set's file for source row ``row`` and variant ``variant`` holds
    exactly ``augment_image(image, seed, row, variant)`` (before JPEG encoding).
    """
    check_seed(seed)
    return augment_with(cached_pipeline(pipeline), np.asarray(image), seed, row, variant)


class OnlineAugment:
    """The pipeline applied per batch in the loader: ``augment(images_uint8, rng) -> images_uint8``.

    Each image of the batch gets a seed drawn from ``rng`` (the generator's
    per-(seed, epoch, batch) generator), so a batch is augmented the same way
    whichever worker builds it. Picklable, thread-safe.
    """

    def __init__(self, pipeline=REPORT_PIPELINE):
        check_declaration(pipeline)
        self.pipeline = tuple((name, dict(kwargs)) for name, kwargs in pipeline)

    def __repr__(self):
        return f"OnlineAugment({[name for name, _ in self.pipeline]})"

    def get_config(self):
        """Plain data that identifies this hook (for stage keys)."""
        return {"pipeline": canonical(self.pipeline)}

    def __call__(self, images, rng):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"OnlineAugment wants a uint8 (B, H, W, C) batch, got {images.dtype} {images.shape}")
        compose = cached_pipeline(self.pipeline)
        seeds = rng.integers(2**63, size=len(images))
        out = np.empty_like(images)
        for i, (image, seed) in enumerate(zip(images, seeds)):
            out[i] = seed_pipeline(compose, seed)(image=image)["image"]
        return out


def check_seed(seed) -> int:
    try:
        return non_negative_int(seed)
    except ValueError as exc:
        raise ValueError(f"seed {exc}, got {seed!r}") from None
