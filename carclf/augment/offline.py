"""The offline augmented set (the report's step 8): variants of every training crop, written once.

Parallel, resumable, the same pixels on every run (one seed per image and variant); the test set is never
augmented.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np

from carclf.augment.manifest import AugmentedSet, damaged_files, manifest_bytes, read_manifest
from carclf.augment.pipeline import augment_with, build_pipeline, cached_pipeline, check_declaration, pipeline_for
from carclf.cache import StageCache, atomic_write, canonical, check_free_space, file_sha256, unit_filename
from carclf.paths import usable_cpus
from carclf.settings import AugmentSettings, check_positive_int, non_negative_int
from carclf.splits import DecodedSplit

log = logging.getLogger("carclf.augment")

__all__ = ["AUGMENT_VERSION", "STAGE", "build_augmented_set", "source_fingerprint"]

#: The stage name of the offline augmented set in the StageCache.
STAGE = "augmented"

#: Bumped when the way variants are made or named changes (old sets are not reused). 2: sha256 per file.
AUGMENT_VERSION = 2

_FORMATS = {"jpg": ".jpg", "png": ".png"}


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
    """Write the missing variants of rows [start, stop); return how many files were written and the sha256
    of every file of the rows (the manifest lists them, so a damaged file is found when the set is read).

    Every file is renamed into place before this returns; the caller syncs the chunk.
    """
    images, base = _open_source(task["source"])
    pipeline = cached_pipeline(task["pipeline"])
    folder, written, sums = Path(task["folder"]), 0, {}
    for row, names in zip(range(task["start"], task["stop"]), task["names"]):
        for variant, name in enumerate(names):
            path = folder / name
            if path.exists():  # finished earlier (written atomically: never partial)
                sums[name] = file_sha256(path)
                continue
            image = augment_with(pipeline, np.asarray(images[row - base]), task["seed"], row, variant)
            data = _encode(image, task["format"], task["quality"])
            # Not fsynced one by one: the chunk is synced once before it is recorded done.
            atomic_write(path, data, durable=False)
            sums[name] = hashlib.sha256(data).hexdigest()
            written += 1
    return written, sums


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
        self.written, self.sums = 0, {}
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
        self._add(*_run_task(task))
        self.bar.update(task["count"])

    def _add(self, written, sums):
        self.written += written
        self.sums.update(sums)

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
                    self._add(*future.result())
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


def build_augmented_set(
    source,
    cache: StageCache,
    settings: AugmentSettings | None = None,
    seed=0,
    *,
    out_dir=None,
    image_format="jpg",
    quality=95,
    workers=None,
    executor=None,
    chunk_size=512,
    progress=True,
    deps=(),
) -> AugmentedSet:
    """Write ``settings.n_variants`` augmented copies of every training crop, once.

    ``source`` is the decoded cache's train split (uint8 box crops at the training input size) or
    ``build_decoded_cache``'s dict (its "train" is used; the test set is never augmented). ``settings``
    names the pipeline and the number of variants. Files go to ``out_dir/<key>/<source stem>_<variant>.jpg``
    (``out_dir`` default: ``Paths.default().augmented``) with ``manifest.csv`` (file, source, row, variant,
    class_id), written last.

    Variant ``v`` of row ``r`` is :func:`carclf.augment.augment_image` ``(crop, seed, r, v)``, so a rerun
    writes the same pixels, whatever ``workers`` / ``executor`` (default: the settings', else every usable
    core in processes): this process and ``workers - 1`` helpers,
    spawned processes (``"process"``; from a script, call this under ``if __name__ == "__main__":``) or
    threads (``"thread"``). The work is the stage ``"augmented"`` of ``cache``, keyed by the variants, the
    seed, the pipeline's declaration, the image size, the format, the albumentations and OpenCV versions and
    :func:`source_fingerprint`: a finished set is only opened again, and a killed run resumes (chunks of
    ``chunk_size`` rows recorded done; every file is written atomically). JPEG (default, ``quality`` 95)
    keeps the set about five times smaller than PNG; ``image_format="png"`` is lossless.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # a spawned worker is importing an unguarded main script: do not start a second build
        raise RuntimeError(
            "build_augmented_set called while a worker process imports the main script; "
            "put the call under `if __name__ == '__main__':`"
        )
    if image_format not in _FORMATS:
        raise ValueError(f"image_format must be one of {sorted(_FORMATS)}, got {image_format!r}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality!r}")
    settings = settings or AugmentSettings()
    executor = executor or settings.executor or "process"
    if executor not in ("process", "thread"):
        raise ValueError(f"executor must be 'process' or 'thread', got {executor!r}")
    split = _train_split(source)
    declared = pipeline_for(settings.pipeline, split.image_size, settings.crop_scale)
    declaration = tuple((name, dict(kwargs)) for name, kwargs in check_declaration(declared))
    build_pipeline(declaration)  # fail here, not in a worker, on bad arguments
    if out_dir is None:
        from carclf.paths import Paths

        out_dir = Paths.default().augmented
    build = _Build(
        split=split,
        cache=cache,
        n_variants=settings.n_variants,
        seed=non_negative_int(seed),
        declaration=declaration,
        image_format=image_format,
        quality=int(quality),
        workers=max(1, int(workers or settings.workers or usable_cpus())),
        executor=executor,
        chunk_size=check_positive_int("chunk_size", chunk_size),
        progress=progress,
        deps=list(deps),
        out_dir=Path(out_dir),
    )
    return build.run()


@dataclass
class _Build:
    """One offline set being built: its stage key, its chunks of rows, and how each chunk is written."""

    split: DecodedSplit
    cache: StageCache
    n_variants: int
    seed: int
    declaration: tuple
    image_format: str
    quality: int
    workers: int
    executor: str
    chunk_size: int
    progress: bool
    deps: list
    out_dir: Path
    runner: _Runner | None = None

    def __post_init__(self):
        self.config = {
            "version": AUGMENT_VERSION,
            "n_variants": self.n_variants,
            "seed": self.seed,
            "pipeline": canonical(self.declaration),
            "image_size": list(self.image_size),
            "format": self.image_format,
            "quality": self.quality if self.image_format == "jpg" else None,
            "albumentations": A.__version__,
            "opencv": cv2.__version__,
            "source": source_fingerprint(self.split),
            "rows": len(self.split),
        }
        self.key = self.cache.key(STAGE, self.config, self.deps)
        self.folder = self.out_dir / self.key
        self.paths = [str(p) for p in self.split.paths]
        self.names = _file_names(self.paths, self.n_variants, _FORMATS[self.image_format])
        self.mapped = _whole_memmap(self.split.images)
        self.bounds = {}
        for start in range(0, len(self.split), self.chunk_size):
            stop = min(start + self.chunk_size, len(self.split))
            self.bounds[f"rows-{start:07d}-{stop:07d}"] = (start, stop)

    @property
    def image_size(self) -> tuple:
        return tuple(int(v) for v in self.split.images.shape[1:3])

    def run(self) -> AugmentedSet:
        result = self._run_stage()
        if result.loaded and not self._files_intact():
            self.cache.invalidate(STAGE, self.key)  # the files are kept: only the missing ones are written again
            result = self._run_stage()
        written = self.runner.written
        if not result.loaded:
            log.info(
                "augmented set %s: %d files (%d written now)", self.folder, len(self.split) * self.n_variants, written
            )
        return AugmentedSet(
            self.folder,
            self.key,
            read_manifest(self.folder),
            self.image_size,
            int(self.split.num_classes),
            self.n_variants,
            self.seed,
            result.loaded,
            written,
            self.cache,
            rebuild=self.run,
        )

    def _files_intact(self) -> bool:
        """Whether every file of a finished set is there as written; a damaged one is logged and removed."""
        if not (self.folder / "manifest.csv").is_file():
            log.warning("the manifest of the augmented set %s is missing; writing the set again", self.folder)
            return False
        manifest = read_manifest(self.folder)
        damaged = damaged_files(self.folder, manifest) if "sha256" in manifest else list(manifest["file"])
        for name in damaged:
            log.warning(
                "augmented image %s is missing or damaged (not as written); writing it again", self.folder / name
            )
            (self.folder / name).unlink(missing_ok=True)
        return not damaged

    def _check_space(self):
        """The files still to write must fit (estimated from the image size: docs/integrity.md)."""
        missing = sum(1 for row in self.names for name in row if not (self.folder / name).exists())
        height, width = self.image_size
        per_file = height * width * 3 * (0.3 if self.image_format == "jpg" else 1.0)
        check_free_space(self.folder, int(missing * per_file), f"{missing} augmented images")

    def _run_stage(self):
        parts = self.cache.parts_dir(STAGE, self.key)
        done_rows = sum(
            stop - start
            for unit, (start, stop) in self.bounds.items()
            if (parts / f"{unit_filename(unit)}.pkl").is_file()
        )
        total = len(self.split) * self.n_variants
        self.runner = _Runner(self.workers, self.executor, self.progress, total, done_rows * self.n_variants)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.cache.exists(STAGE, self.key):
            self._check_space()
        try:
            return self.cache.run_units(
                STAGE,
                self.config,
                list(self.bounds),
                self._chunk,
                combine=self._combine,
                deps=self.deps,
                progress=False,
            )
        finally:
            self.runner.close()

    def _chunk(self, unit):
        start, stop = self.bounds[unit]
        images = self.split.images
        step = max(1, min(32, math.ceil((stop - start) / (4 * self.workers))))
        tasks = []
        for lo in range(start, stop, step):
            hi = min(lo + step, stop)
            if self.mapped is not None:
                src = ("memmap", self.mapped[0], self.mapped[1], tuple(images.shape))
            else:
                src = ("array", np.asarray(images[lo:hi]), lo)
            tasks.append(
                {
                    "source": src,
                    "start": lo,
                    "stop": hi,
                    "names": self.names[lo:hi],
                    "pipeline": self.declaration,
                    "seed": self.seed,
                    "folder": str(self.folder),
                    "format": self.image_format,
                    "quality": self.quality,
                    "count": (hi - lo) * self.n_variants,
                }
            )
        self.runner.run(tasks)
        os.sync()  # the chunk's files reach the disk before the chunk is recorded as done
        names = [name for row in self.names[start:stop] for name in row]
        return {"start": start, "stop": stop, "sha256": {name: self.runner.sums[name] for name in names}}

    def _combine(self, done):
        class_ids = np.asarray(self.split.class_ids, dtype=np.int64)
        sums = {name: digest for value in done.values() for name, digest in value["sha256"].items()}
        records = [
            (self.names[row][v], self.paths[row], row, v, int(class_ids[row]), sums[self.names[row][v]])
            for row in range(len(self.split))
            for v in range(self.n_variants)
        ]
        atomic_write(self.folder / "manifest.csv", manifest_bytes(records))
        # a SIGKILL mid-write can leave a temp file; every result file is in place now
        for stale in self.folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
        return {
            "manifest": "manifest.csv",
            "files": len(records),
            "image_size": self.image_size,
            "num_classes": int(self.split.num_classes),
            "n_variants": self.n_variants,
            "seed": self.seed,
        }
