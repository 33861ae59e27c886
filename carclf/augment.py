"""Augmentation (the report's step 8): the albumentations pipeline, the offline augmented set, CutMix and MixUp.

* :data:`REPORT_PIPELINE` declares the report's seven transforms ("Data
  Augmentation Step") in its order with its probabilities, written for
  albumentations 2.0.8; :func:`build_pipeline` turns a declaration into an
  ``A.Compose``. Edit the declaration (or pass your own) to change the pipeline.
* :func:`build_augmented_set` writes ``n_variants`` augmented copies of every
  training crop under ``data/augmented/<key>/`` with a ``manifest.csv``, in
  parallel, resumable, the same pixels on every run (a seed per image);
  :meth:`AugmentedSet.to_split` decodes them for the training generator. The
  test set is never augmented.
* :class:`OnlineAugment` applies the same pipeline per batch instead
  (``augment`` hook of :class:`carclf.generators.ImageBatches`).
* :func:`cutmix` and :func:`mixup` mix a batch; :func:`batch_mixer` makes the
  generator's ``mix`` hook from the run's switches (both off by default, as in
  the report).
* :func:`plot_augmentations` draws originals beside their augmented variants.

Seeding. albumentations 2.x offers ``Compose(seed=...)`` and
``set_random_seed(seed)``, but both give *every transform its own generator
seeded with the same number*, so each transform's "apply with probability p"
draw is the same number: with one seed per image the transforms become nested
(whenever the p=0.2 Affine fires, so do all the p>=0.2 ones; only 5 of the
2**7 on/off combinations ever occur). Here one generator, seeded from
``(seed, row, variant)``, is shared by the whole pipeline through
``Compose.set_random_state``, so the transforms draw independently, as in 1.3.

This module does not import TensorFlow or Keras.
"""

from __future__ import annotations

import os

# albumentations 2.0.x asks PyPI for a newer release at import (a 2 s timeout
# offline, and a warning either way); nothing in carclf wants that.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import contextlib  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import random  # noqa: E402
import threading  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor  # noqa: E402
from concurrent.futures.process import BrokenProcessPool  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from carclf.cache import StageCache, atomic_write, canonical, canonical_json, unit_filename  # noqa: E402
from carclf.config import usable_cpus  # noqa: E402
from carclf.decoded import DecodedSplit, build_decoded_cache  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("carclf.augment")

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

#: Default Beta(alpha, alpha) parameters: CutMix's paper uses 1.0, MixUp's 0.2 for ImageNet.
CUTMIX_ALPHA = 1.0
MIXUP_ALPHA = 0.2

#: The stage name of the offline augmented set in the StageCache.
STAGE = "augmented"

#: Bumped when the way variants are made or named changes (old sets are not reused).
AUGMENT_VERSION = 1

_FORMATS = {"jpg": ".jpg", "png": ".png"}


# --------------------------------------------------------------------------- #
# Building and seeding the pipeline
# --------------------------------------------------------------------------- #


def _check_declaration(declaration):
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
    return A.Compose([getattr(A, name)(**kwargs) for name, kwargs in _check_declaration(declaration)])


def seed_pipeline(pipeline: A.Compose, *entropy) -> A.Compose:
    """Seed ``pipeline`` for one image from non-negative ints (e.g. seed, row, variant).

    One numpy and one Python generator, both derived from ``entropy``, are
    shared by every transform (see the module note on why not ``set_random_seed``).
    """
    generator = np.random.default_rng([int(e) for e in entropy])
    pipeline.set_random_state(generator, random.Random(int(generator.integers(2**63))))
    return pipeline


_local = threading.local()


def _cached_pipeline(declaration) -> A.Compose:
    """This thread's Compose for ``declaration`` (a Compose's random state is not thread-safe)."""
    text = canonical_json(declaration)
    pipelines = getattr(_local, "pipelines", None)
    if pipelines is None:
        pipelines = _local.pipelines = {}
    if text not in pipelines:
        pipelines[text] = build_pipeline(declaration)
    return pipelines[text]


def _augment_with(pipeline, image, seed, row, variant):
    return seed_pipeline(pipeline, seed, row, variant)(image=image)["image"]


def augment_image(image, seed=0, row=0, variant=0, pipeline=REPORT_PIPELINE) -> np.ndarray:
    """One augmented variant of a uint8 RGB ``image``; a function of (seed, row, variant) only.

    The offline set's file for source row ``row`` and variant ``variant`` holds
    exactly ``augment_image(image, seed, row, variant)`` (before JPEG encoding).
    """
    _check_seed(seed)
    return _augment_with(_cached_pipeline(pipeline), np.asarray(image), seed, row, variant)


class OnlineAugment:
    """The pipeline applied per batch in the loader: ``augment(images_uint8, rng) -> images_uint8``.

    Each image of the batch gets a seed drawn from ``rng`` (the generator's
    per-(seed, epoch, batch) generator), so a batch is augmented the same way
    whichever worker builds it. Picklable, thread-safe.
    """

    def __init__(self, pipeline=REPORT_PIPELINE):
        _check_declaration(pipeline)
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
        compose = _cached_pipeline(self.pipeline)
        seeds = rng.integers(2**63, size=len(images))
        out = np.empty_like(images)
        for i, (image, seed) in enumerate(zip(images, seeds)):
            out[i] = seed_pipeline(compose, seed)(image=image)["image"]
        return out


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------- #
# CutMix and MixUp
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# The offline augmented set
# --------------------------------------------------------------------------- #


def _train_split(source):
    if isinstance(source, dict):
        if "train" not in source:
            raise ValueError(f"no 'train' split among {sorted(source)}")
        source = source["train"]
    if getattr(source, "split", "train") != "train":
        raise ValueError(f"only the training split is augmented, got split {source.split!r} (the test set never is)")
    for attr in ("images", "class_ids", "paths", "num_classes"):
        if not hasattr(source, attr):
            raise TypeError(
                f"source must be a DecodedSplit (or build_decoded_cache's dict), got {type(source).__name__}"
            )
    images = source.images
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"source images must be uint8 (N, H, W, 3) with N > 0, got {images.dtype} {images.shape}")
    return source


def _whole_memmap(images):
    """(filename, offset) when ``images`` is a whole .npy/raw memmap (workers reopen it), else None."""
    if not isinstance(images, np.memmap) or not images.filename or not images.flags.c_contiguous:
        return None
    try:
        size = os.path.getsize(images.filename)
    except OSError:
        return None
    # A slice of a memmap keeps its parent's filename and offset: accept only the whole file's data.
    return (os.path.realpath(images.filename), int(images.offset)) if size == images.offset + images.nbytes else None


def source_fingerprint(split) -> str:
    """What identifies the source crops: their paths, labels, shape, and their file or their pixels.

    A whole memmap (the decoded cache's ``train.npy``) is identified by its
    file: the decoded cache never rewrites a file under the same key. Other
    arrays are hashed.
    """
    digest = hashlib.sha256()
    head = [
        [str(p) for p in split.paths],
        np.asarray(split.class_ids).tolist(),
        list(split.images.shape),
        int(split.num_classes),
    ]
    digest.update(json.dumps(head, separators=(",", ":")).encode())
    mapped = _whole_memmap(split.images)
    if mapped is not None:
        digest.update(json.dumps(list(mapped)).encode())
    else:
        images = split.images
        for start in range(0, len(images), 256):
            digest.update(np.ascontiguousarray(images[start : start + 256]).tobytes())
    return digest.hexdigest()


def _file_names(paths, n_variants, ext):
    stems = [unit_filename(Path(str(p)).stem or "image") for p in paths]
    unique = len(set(stems)) == len(stems)
    prefix = (lambda row: "") if unique else (lambda row: f"{row:05d}_")
    return [[f"{prefix(row)}{stem}_{v}{ext}" for v in range(n_variants)] for row, stem in enumerate(stems)]


_sources: dict = {}


def _open_source(source):
    kind = source[0]
    if kind == "array":
        return source[1], source[2]
    _, filename, offset, shape = source
    key = (filename, offset, shape)
    if key not in _sources:
        _sources[key] = np.memmap(filename, dtype=np.uint8, mode="r", offset=offset, shape=shape)
    return _sources[key], 0


def _encode(image, fmt, quality):
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if fmt == "jpg":
        ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    else:
        ok, buffer = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError(f"cv2 cannot encode a {image.shape} image as {fmt}")
    return buffer.tobytes()


def _run_task(task):
    """Write the missing variants of rows [start, stop); return how many files were written.

    Every file is renamed into place before this returns; the caller syncs the chunk.
    """
    images, base = _open_source(task["source"])
    pipeline = _cached_pipeline(task["pipeline"])
    folder, written = Path(task["folder"]), 0
    for row, names in zip(range(task["start"], task["stop"]), task["names"]):
        for variant, name in enumerate(names):
            path = folder / name
            if path.exists():  # finished earlier (written atomically: never partial)
                continue
            image = _augment_with(pipeline, np.asarray(images[row - base]), task["seed"], row, variant)
            # Not fsynced one by one: the chunk is synced once before it is recorded done.
            atomic_write(path, _encode(image, task["format"], task["quality"]), durable=False)
            written += 1
    return written


def _worker_init():
    cv2.setNumThreads(1)  # the workers use the cores; one OpenCV thread each


class _Runner:
    """Runs a chunk's tasks here and on ``workers - 1`` helpers; keeps the progress bar.

    This process is one of the workers: it takes tasks from the back of the
    list while the helpers (spawned processes or threads, made at first use)
    take them from the front, so the helpers' start-up costs no idle time.
    """

    def __init__(self, workers, executor, progress, total, initial):
        self.workers, self.executor = workers, executor
        self.progress, self.total, self.initial = progress, total, initial
        self.pool = self.bar = None
        self.written = 0
        self._cv2_threads = None

    def _start(self):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=self.total, initial=self.initial, desc="augmenting", unit="img", disable=not self.progress
        )
        # this process augments too: OpenCV's own threads would compete with the workers
        self._cv2_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        helpers = self.workers - 1
        if helpers and self.executor == "thread":
            self.pool = ThreadPoolExecutor(helpers, thread_name_prefix="carclf-augment")
        elif helpers:
            # spawn, not fork: this process may hold TensorFlow's or OpenCV's threads
            context = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(helpers, mp_context=context, initializer=_worker_init)

    def _here(self, task):
        self.written += _run_task(task)
        self.bar.update(task["count"])

    def run(self, tasks):
        if self.bar is None:
            self._start()
        if self.pool is None:
            for task in tasks:
                self._here(task)
            return
        futures = [self.pool.submit(_run_task, task) for task in tasks]
        try:
            for future, task in zip(reversed(futures), reversed(tasks)):
                if not future.cancel():  # a helper has it: the rest are theirs too
                    break
                self._here(task)
            for future, task in zip(futures, tasks):
                if not future.cancelled():
                    self.written += future.result()
                    self.bar.update(task["count"])
        except BrokenProcessPool as exc:
            raise RuntimeError(
                "an augmentation worker process died. If this runs from a script, the call must be under "
                "`if __name__ == '__main__':` (workers are spawned and import the script); or pass "
                "executor='thread' or workers=1"
            ) from exc
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.bar is not None:
            self.bar.close()
        if self._cv2_threads is not None:
            cv2.setNumThreads(self._cv2_threads)


@dataclass
class AugmentedSet:
    """The offline augmented set: files in ``folder`` listed by ``manifest``.

    ``manifest`` columns: ``file`` (relative to ``folder``), ``source`` (the
    original image), ``row`` (its row in the source split), ``variant``,
    ``class_id`` and ``path`` (absolute). ``written``: files written by the
    call that returned this (0 when the set was only opened).
    """

    folder: Path
    key: str
    manifest: pd.DataFrame = field(repr=False)
    image_size: tuple
    num_classes: int
    n_variants: int
    seed: int
    loaded: bool
    written: int = 0
    cache: StageCache | None = field(default=None, repr=False, compare=False)

    def __len__(self):
        return len(self.manifest)

    def frame(self) -> pd.DataFrame:
        """The manifest as a ``build_decoded_cache`` frame (whole images, box = the full image)."""
        import pandas as pd

        height, width = self.image_size
        m = self.manifest
        return pd.DataFrame({
            "path": m["path"].astype(str), "split": "train", "class_id": m["class_id"].astype("int64"),
            "x1": 0, "y1": 0, "x2": width, "y2": height, "width": width, "height": height,
        })  # fmt: skip

    def to_split(self, cache: StageCache | None = None, workers=None, progress=True) -> DecodedSplit:
        """The variants decoded into a memmap (the decoded cache's machinery, stage ``decoded``), in manifest order.

        ``cache`` defaults to the one the set was built with.
        """
        cache = cache or self.cache
        if cache is None:
            raise ValueError("to_split needs a StageCache to hold the decoded variants")
        decoded = build_decoded_cache(
            self.frame(), cache, image_size=self.image_size, crop="full", margin=0.0, workers=workers, progress=progress
        )["train"]
        return DecodedSplit(decoded.images, decoded.class_ids, decoded.paths, "augmented", self.num_classes)


def read_manifest(folder) -> pd.DataFrame:
    """``folder/manifest.csv`` with an absolute ``path`` column added."""
    import pandas as pd

    folder = Path(folder)
    manifest = pd.read_csv(folder / "manifest.csv", dtype={"file": str, "source": str})
    manifest["path"] = [str(folder / f) for f in manifest["file"]]
    return manifest


def _manifest_bytes(records) -> bytes:
    import pandas as pd

    text = io.StringIO()
    pd.DataFrame(records, columns=["file", "source", "row", "variant", "class_id"]).to_csv(text, index=False)
    return text.getvalue().encode("utf-8")


def build_augmented_set(
    source,
    cache: StageCache,
    out_dir=None,
    n_variants=1,
    seed=0,
    pipeline=REPORT_PIPELINE,
    image_format="jpg",
    quality=95,
    workers=None,
    executor="process",
    chunk_size=512,
    progress=True,
    deps=(),
) -> AugmentedSet:
    """Write ``n_variants`` augmented copies of every training crop, once.

    ``source`` is the decoded cache's train split (uint8 box crops at the
    training input size) or ``build_decoded_cache``'s dict (its "train" is
    used; the test set is never augmented). Files go to
    ``out_dir/<key>/<source stem>_<variant>.jpg`` (``out_dir`` default:
    ``Paths.default().augmented``) with ``manifest.csv`` (file, source, row,
    variant, class_id), written last.

    Variant ``v`` of row ``r`` is :func:`augment_image` ``(crop, seed, r, v)``,
    so a rerun writes the same pixels, whatever ``workers`` / ``executor``.
    ``workers`` (default: all cores): this process and ``workers - 1``
    helpers, spawned processes (``executor="process"``; from a script, call
    this under ``if __name__ == "__main__":``) or threads (``"thread"``). The work is a
    stage of ``cache`` (``"augmented"``), keyed by n_variants, seed, the
    pipeline declaration, the image size, the format, the albumentations and
    OpenCV versions and :func:`source_fingerprint`: a finished set is only
    opened again, and a killed run resumes (chunks of ``chunk_size`` rows
    recorded done; within a chunk, files already written are kept, and every
    file is written atomically). JPEG (default, ``quality`` 95) keeps the set
    about five times smaller than PNG; ``image_format="png"`` is lossless.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # a spawned worker is importing an unguarded main script: do not start a second build
        raise RuntimeError(
            "build_augmented_set called while a worker process imports the main script; "
            "put the call under `if __name__ == '__main__':`"
        )
    split = _train_split(source)
    if isinstance(n_variants, bool) or not isinstance(n_variants, (int, np.integer)) or n_variants < 1:
        raise ValueError(f"n_variants must be an int >= 1, got {n_variants!r}")
    n_variants, seed = int(n_variants), _check_seed(seed)
    if image_format not in _FORMATS:
        raise ValueError(f"image_format must be one of {sorted(_FORMATS)}, got {image_format!r}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality!r}")
    if executor not in ("process", "thread"):
        raise ValueError(f"executor must be 'process' or 'thread', got {executor!r}")
    if int(chunk_size) <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size!r}")
    workers = max(1, int(workers or usable_cpus()))
    declaration = tuple((name, dict(kwargs)) for name, kwargs in _check_declaration(pipeline))
    build_pipeline(declaration)  # fail here, not in a worker, on bad arguments

    images = split.images
    image_size = tuple(int(v) for v in images.shape[1:3])
    config = {
        "version": AUGMENT_VERSION,
        "n_variants": n_variants,
        "seed": seed,
        "pipeline": canonical(declaration),
        "image_size": list(image_size),
        "format": image_format,
        "quality": int(quality) if image_format == "jpg" else None,
        "albumentations": A.__version__,
        "opencv": cv2.__version__,
        "source": source_fingerprint(split),
        "rows": len(split),
    }
    deps = list(deps)
    key = cache.key(STAGE, config, deps)
    if out_dir is None:
        from carclf.config import Paths

        out_dir = Paths.default().augmented
    folder = Path(out_dir) / key
    paths = [str(p) for p in split.paths]
    class_ids = np.asarray(split.class_ids, dtype=np.int64)
    names = _file_names(paths, n_variants, _FORMATS[image_format])

    def result_of(stage_result, written):
        manifest = read_manifest(folder)
        return AugmentedSet(
            folder,
            key,
            manifest,
            image_size,
            int(split.num_classes),
            n_variants,
            seed,
            stage_result.loaded,
            written,
            cache,
        )

    mapped = _whole_memmap(images)
    chunk_size = int(chunk_size)
    units, bounds = [], {}
    for start in range(0, len(split), chunk_size):
        stop = min(start + chunk_size, len(split))
        unit = f"rows-{start:07d}-{stop:07d}"
        units.append(unit)
        bounds[unit] = (start, stop)

    def compute_unit(unit):
        start, stop = bounds[unit]
        step = max(1, min(32, math.ceil((stop - start) / (4 * workers))))
        tasks = []
        for lo in range(start, stop, step):
            hi = min(lo + step, stop)
            if mapped is not None:
                src = ("memmap", mapped[0], mapped[1], tuple(images.shape))
            else:
                src = ("array", np.asarray(images[lo:hi]), lo)
            tasks.append({
                "source": src, "start": lo, "stop": hi, "names": names[lo:hi], "pipeline": declaration,
                "seed": seed, "folder": str(folder), "format": image_format, "quality": int(quality),
                "count": (hi - lo) * n_variants,
            })  # fmt: skip
        runner.run(tasks)
        os.sync()  # the chunk's files reach the disk before the chunk is recorded as done
        return {"start": start, "stop": stop}

    def combine(done):
        records = [
            (names[row][v], paths[row], row, v, int(class_ids[row]))
            for row in range(len(split))
            for v in range(n_variants)
        ]
        atomic_write(folder / "manifest.csv", _manifest_bytes(records))
        # a SIGKILL mid-write can leave a temp file; every result file is in place now
        for stale in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
        return {
            "manifest": "manifest.csv",
            "files": len(records),
            "image_size": image_size,
            "num_classes": int(split.num_classes),
            "n_variants": n_variants,
            "seed": seed,
        }

    def run_stage():
        nonlocal runner
        parts = cache.parts_dir(STAGE, key)
        done_rows = sum(
            stop - start for unit, (start, stop) in bounds.items() if (parts / f"{unit_filename(unit)}.pkl").is_file()
        )
        runner = _Runner(workers, executor, progress, len(split) * n_variants, done_rows * n_variants)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            return cache.run_units(STAGE, config, units, compute_unit, combine=combine, deps=deps, progress=False)
        finally:
            runner.close()

    runner = None
    result = run_stage()
    if result.loaded and not (
        (folder / "manifest.csv").is_file() and all((folder / name).is_file() for row in names for name in row)
    ):
        log.warning("augmented files in %s are missing; writing them again", folder)
        cache.invalidate(STAGE, key)
        result = run_stage()
    if not result.loaded:
        log.info("augmented set %s: %d files (%d written now)", folder, len(split) * n_variants, runner.written)
    return result_of(result, runner.written)


# --------------------------------------------------------------------------- #
# The notebook's picture
# --------------------------------------------------------------------------- #


def plot_augmentations(images, pipeline=None, n_variants=4, seed=0, class_names=None, rows=None):
    """A grid: each original crop (first column) beside ``n_variants`` augmented variants.

    ``images``: uint8 RGB (N, H, W, 3) (e.g. ``decoded["train"].read(idx, np.uint8)``).
    ``rows``: their rows in the training split (default 0..N-1); with the set's
    ``seed`` the variants are exactly those :func:`build_augmented_set` writes
    for those rows. ``class_names``: one title per image. Returns a matplotlib
    ``Figure`` (not registered with pyplot; a notebook shows it as a cell's value).
    """
    from matplotlib.figure import Figure

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if int(n_variants) < 1:
        raise ValueError(f"n_variants must be at least 1, got {n_variants!r}")
    n_variants = int(n_variants)
    rows = list(range(len(images))) if rows is None else [int(r) for r in rows]
    if len(rows) != len(images) or (class_names is not None and len(class_names) != len(images)):
        raise ValueError("rows and class_names need one entry per image")
    declaration = REPORT_PIPELINE if pipeline is None else pipeline
    n, cols = len(images), n_variants + 1
    figure = Figure(figsize=(2.0 * cols, 2.1 * n), layout="constrained")
    axes = figure.subplots(n, cols, squeeze=False)
    for i, (image, row) in enumerate(zip(images, rows)):
        title = "original" if class_names is None else f"{class_names[i]}"
        axes[i, 0].imshow(image)
        axes[i, 0].set_title(title, fontsize=8)
        for v in range(n_variants):
            axes[i, v + 1].imshow(augment_image(image, seed, row, v, declaration))
            axes[i, v + 1].set_title(f"variant {v}", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    return figure


__all__ = [
    "AugmentedSet",
    "BatchMixer",
    "CUTMIX_ALPHA",
    "MIXUP_ALPHA",
    "OnlineAugment",
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
    "plot_augmentations",
    "read_manifest",
    "seed_pipeline",
    "source_fingerprint",
]
