"""CutMix and MixUp (the report's step 8, off by default as in the report), as the generator's ``mix`` hook."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["BatchMixer", "CUTMIX_ALPHA", "MIXUP_ALPHA", "batch_mixer", "cutmix", "cutmix_box", "mixup"]

#: Default Beta(alpha, alpha) parameters: CutMix's paper uses 1.0, MixUp's 0.2 for ImageNet.
CUTMIX_ALPHA = 1.0
MIXUP_ALPHA = 0.2


def _check_batch(images, labels, alpha):
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.float32)
    if images.ndim != 4 or labels.ndim != 2 or len(images) != len(labels):
        raise ValueError(f"want images (B, H, W, C) and labels (B, K), got {images.shape} and {labels.shape}")
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    return images, labels


def cutmix_box(height, width, lam, rng):
    """The (y1, y2, x1, x2) patch of CutMix: area about (1 - lam), centred at random, clipped."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y1, y2 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    x1, x2 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    return int(y1), int(y2), int(x1), int(x2)


def cutmix(images, labels, alpha=CUTMIX_ALPHA, rng=None):
    """CutMix a batch (Yun et al. 2019, as the report describes it).

    The batch is permuted; lambda ~ Beta(alpha, alpha); one box of area about
    (1 - lambda), clipped to the image, is pasted into every image from its
    partner in the permutation. Labels are mixed by the pasted area exactly:
    ``lam = 1 - box_pixels / image_pixels`` (recomputed after clipping),
    ``y = lam * y + (1 - lam) * y[perm]``, so rows still sum to 1.
    Returns new float32 ``(images, labels)``; the inputs are not changed.
    """
    images, labels = _check_batch(images, labels, alpha)
    rng = rng if rng is not None else np.random.default_rng()
    height, width = images.shape[1:3]
    perm = rng.permutation(len(images))
    lam = float(rng.beta(alpha, alpha))
    y1, y2, x1, x2 = cutmix_box(height, width, lam, rng)
    out = images.astype(np.float32, copy=True)
    out[:, y1:y2, x1:x2] = images[perm, y1:y2, x1:x2]
    lam = 1.0 - (y2 - y1) * (x2 - x1) / (height * width)
    return out, (lam * labels + (1.0 - lam) * labels[perm]).astype(np.float32)


def mixup(images, labels, alpha=MIXUP_ALPHA, rng=None):
    """MixUp a batch (Zhang et al. 2018): ``x = lam x + (1 - lam) x[perm]``, the same for ``y``.

    lambda ~ Beta(alpha, alpha), one per batch; a larger alpha blends more
    evenly. Returns new float32 ``(images, labels)``; label rows sum to 1.
    """
    images, labels = _check_batch(images, labels, alpha)
    rng = rng if rng is not None else np.random.default_rng()
    perm = rng.permutation(len(images))
    lam = float(rng.beta(alpha, alpha))
    x = images.astype(np.float32)
    return lam * x + (1.0 - lam) * x[perm], (lam * labels + (1.0 - lam) * labels[perm]).astype(np.float32)


@dataclass(frozen=True)
class BatchMixer:
    """The generator's ``mix`` hook: CutMix and/or MixUp (one of them per batch, at random, when both are on)."""

    cutmix_alpha: float | None = None
    mixup_alpha: float | None = None

    def __call__(self, images, labels, rng=None):
        rng = rng if rng is not None else np.random.default_rng()
        use_cutmix = self.cutmix_alpha is not None
        if use_cutmix and self.mixup_alpha is not None:
            use_cutmix = rng.random() < 0.5
        if use_cutmix:
            return cutmix(images, labels, self.cutmix_alpha, rng)
        return mixup(images, labels, self.mixup_alpha, rng)


def _alpha(switch, default, name):
    if switch is None or switch is False:
        return None
    if switch is True:
        return float(default)
    try:
        alpha = float(switch)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be True/False or an alpha > 0, got {switch!r}") from None
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"{name} alpha must be > 0, got {switch!r}")
    return alpha


def batch_mixer(cutmix=False, mixup=False):
    """The ``mix`` hook for a run: None when both are off (the report's default).

    ``cutmix`` / ``mixup`` are True (default alpha: :data:`CUTMIX_ALPHA`,
    :data:`MIXUP_ALPHA`), False, or an alpha.
    """
    c, m = _alpha(cutmix, CUTMIX_ALPHA, "cutmix"), _alpha(mixup, MIXUP_ALPHA, "mixup")
    return None if c is None and m is None else BatchMixer(c, m)
