"""The decoded image cache: cropped, resized uint8 images in memory-mapped ``.npy``.

JPEGs are decoded once, by :func:`build_decoded_cache`, into one
``(N, H, W, 3)`` uint8 array per split, stored in the stage cache's artifact
folder of stage ``"decoded"``. Training then reads batches from those memmaps
(:meth:`DecodedSplit.batches`) without touching a JPEG again.

The build is resumable: it works in chunks of rows, and each chunk is recorded
done (through :meth:`StageCache.run_units`) only after its rows are written and
flushed, so a killed build redoes only its unfinished chunks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from carclf.cache import StageCache, load_pickle, unit_filename
from carclf.config import usable_cpus

log = logging.getLogger("carclf.decoded")

#: The stage name of the decoded image cache in the StageCache.
STAGE = "decoded"

#: Bumped when decoding itself changes (so old caches are not reused).
DECODE_VERSION = 1

_BOX = ("x1", "y1", "x2", "y2")
_REQUIRED = ("path", "split", "class_id", *_BOX)
_SPLIT_ORDER = {"train": 0, "test": 1}


# --------------------------------------------------------------------------- #
# One image
# --------------------------------------------------------------------------- #


def _check_size(image_size):
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), got {image_size!r}") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return height, width


def _check_crop(crop, margin):
    if crop not in ("box", "full"):
        raise ValueError(f"crop must be 'box' or 'full', got {crop!r}")
    if not np.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a fraction >= 0, got {margin!r}")


def crop_window(box, width, height, margin=0.08):
    """The (x1, y1, x2, y2) pixel window of ``box`` grown by ``margin``, clipped.

    ``box`` uses slice bounds: the crop is ``image[y1:y2, x1:x2]``, so with
    ``margin=0`` the window is the box itself (clipped to the image).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    left = max(0, int(np.floor(x1 - mx)))
    top = max(0, int(np.floor(y1 - my)))
    right = min(width, int(np.ceil(x2 + mx)))
    bottom = min(height, int(np.ceil(y2 + my)))
    return left, top, right, bottom


def _decode(path, box, image_size, crop, margin, expect_wh=None):
    # IGNORE_ORIENTATION: Stanford Cars boxes are in raw pixel coordinates, so an
    # EXIF rotation must not be applied before cropping.
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"cv2 cannot decode image {path}")
    height, width = image.shape[:2]
    if expect_wh is not None and (width, height) != tuple(expect_wh):
        raise ValueError(f"image {path} decodes to {width}x{height} but the frame says {expect_wh[0]}x{expect_wh[1]}")
    if crop == "box" and box is not None:
        left, top, right, bottom = crop_window(box, width, height, margin)
        if right <= left or bottom <= top:
            raise ValueError(f"empty crop box {tuple(box)} for image {path} ({width}x{height})")
        image = image[top:bottom, left:right]
    out_h, out_w = image_size
    image = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_image(path, box=None, image_size=(224, 224), crop="box", margin=0.08) -> np.ndarray:
    """Decode one image to uint8 RGB of shape ``(*image_size, 3)``.

    ``image_size`` is (height, width). With ``crop="box"`` the image is cut to
    ``box`` (x1, y1, x2, y2; slice bounds) grown by ``margin`` of the box's
    width/height on each side and clipped to the image (``margin=0``: the tight
    box); with ``crop="full"`` (or no box) the whole image is kept. Grayscale
    images come out as three equal channels. Raises ValueError naming the file
    when cv2 cannot decode it.
    """
    image_size = _check_size(image_size)
    _check_crop(crop, margin)
    return _decode(path, box, image_size, crop, margin)


# --------------------------------------------------------------------------- #
# A decoded split
# --------------------------------------------------------------------------- #


def epoch_order(n, shuffle=True, seed=0, epoch=0) -> np.ndarray:
    """The row order of one epoch: a permutation from Generator((seed, epoch)), or 0..n-1 unshuffled.

    Derived from (seed, epoch) alone, so a resumed run replays the order it would have had.
    """
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


class DecodedSplit:
    """One split of the decoded cache: read-only uint8 images and their labels."""

    def __init__(self, images, class_ids, paths, split, num_classes):
        self.images = images
        self.class_ids = np.asarray(class_ids, dtype=np.int64)
        self.paths = list(paths)
        self.split = split
        self.num_classes = int(num_classes)
        if len(self.images) != len(self.class_ids) or len(self.paths) != len(self.class_ids):
            raise ValueError(f"split {split}: {len(images)} images, {len(class_ids)} labels, {len(paths)} paths")

    def __len__(self):
        return len(self.class_ids)

    def __repr__(self):
        return f"DecodedSplit({self.split!r}, images={self.images.shape}, num_classes={self.num_classes})"

    @property
    def image_size(self):
        return tuple(self.images.shape[1:3])

    def one_hot(self, dtype=np.float32) -> np.ndarray:
        """(N, num_classes) one-hot labels."""
        return np.eye(self.num_classes, dtype=dtype)[self.class_ids]

    def order(self, shuffle=True, seed=0, epoch=0) -> np.ndarray:
        """The row order of one epoch (see :func:`epoch_order`)."""
        return epoch_order(len(self), shuffle, seed, epoch)

    def read(self, indices, dtype=np.float32) -> np.ndarray:
        """Images at ``indices`` (in that order) as ``dtype``, read in sorted order."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.images.shape[1:]), dtype=dtype)
        if len(indices) and np.all(indices[1:] == indices[:-1] + 1):
            out[...] = self.images[indices[0] : indices[-1] + 1]  # one contiguous slice
            return out
        by_position = np.argsort(indices, kind="stable")
        out[by_position] = self.images[indices[by_position]]
        return out

    def batches(self, batch_size, shuffle=True, seed=0, epoch=0):
        """Yield ``(x, y)``: x float32 (B, H, W, 3) in 0-255, y one-hot float32.

        Every row once per epoch, the last partial batch included; shuffled by
        a Generator seeded from ``(seed, epoch)``.
        """
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size!r}")
        batch_size = int(batch_size)
        eye = np.eye(self.num_classes, dtype=np.float32)
        order = self.order(shuffle, seed, epoch)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self.read(idx), eye[self.class_ids[idx]]


# --------------------------------------------------------------------------- #
# Building the cache
# --------------------------------------------------------------------------- #


def _check_frame(frame):
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}")
    if len(frame) == 0:
        raise ValueError("frame has no rows")
    if frame["class_id"].isna().any() or (frame["class_id"] < 0).any():
        raise ValueError("class_id must be 0-based ints")


def frame_fingerprint(frame) -> str:
    """sha256 of the rows that decide the cache: split, path, box, class id."""
    columns = [frame["split"].astype(str).tolist(), frame["path"].astype(str).tolist()]
    columns += [frame[c].astype("int64").tolist() for c in (*_BOX, "class_id")]
    text = json.dumps(list(zip(*columns)), separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_complete_npy(path: Path, shape) -> bool:
    try:
        array = np.load(path, mmap_mode="r")
    except Exception:
        return False
    ok = array.dtype == np.uint8 and array.shape == tuple(shape)
    del array
    return ok


def _create_npy(path: Path, shape) -> None:
    """Create a zero-filled (sparse) uint8 .npy of ``shape``, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=tuple(shape))
    array.flush()
    del array
    os.replace(tmp, path)


class _Builder:
    """Decodes chunks of rows into the writable memmaps; made lazily."""

    def __init__(self, folder, plan, image_size, crop, margin, workers, progress, total, done_rows):
        self.folder = folder
        self.plan = plan
        self.image_size = image_size
        self.crop = crop
        self.margin = margin
        self.workers = max(1, int(workers or usable_cpus()))
        self.progress = progress
        self.total = total
        self.done_rows = done_rows
        self.pool = None
        self.bar = None
        self.arrays = {}

    def array(self, split):
        if split not in self.arrays:
            self.arrays[split] = np.lib.format.open_memmap(self.folder / f"{split}.npy", mode="r+")
        return self.arrays[split]

    def _one(self, images, row, rec):
        images[row] = _decode(rec["path"], rec["box"], self.image_size, self.crop, self.margin, rec["wh"])

    def chunk(self, split, start, stop):
        if self.pool is None:
            from tqdm.auto import tqdm

            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="carclf-decode")
            self.bar = tqdm(
                total=self.total, initial=self.done_rows, desc="decoding", unit="img", disable=not self.progress
            )
        images = self.array(split)
        records = self.plan[split]["records"]
        futures = [self.pool.submit(self._one, images, row, records[row]) for row in range(start, stop)]
        try:
            for future in futures:
                future.result()
                self.bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        images.flush()  # rows on disk before run_units records the chunk done
        return {"split": split, "start": start, "stop": stop}

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.bar.close()
        for array in self.arrays.values():
            array.flush()
        self.arrays.clear()


def _ordered_splits(frame):
    return sorted(frame["split"].astype(str).unique(), key=lambda s: (_SPLIT_ORDER.get(s, 2), s))


def _plan(frame, splits):
    plan = {}
    has_size = "width" in frame.columns and "height" in frame.columns
    for split in splits:
        rows = frame[frame["split"].astype(str) == split]
        boxes = rows[list(_BOX)].astype("int64").to_numpy()
        sizes = rows[["width", "height"]].astype("int64").to_numpy() if has_size else [None] * len(rows)
        records = [
            {"path": str(p), "box": tuple(int(v) for v in b), "wh": None if s is None else (int(s[0]), int(s[1]))}
            for p, b, s in zip(rows["path"], boxes, sizes)
        ]
        plan[split] = {
            "records": records,
            "class_ids": rows["class_id"].astype("int64").to_numpy(),
            "paths": [r["path"] for r in records],
        }
    return plan


def build_decoded_cache(
    frame,
    cache: StageCache,
    image_size=(224, 224),
    crop="box",
    margin=0.08,
    deps=(),
    workers=None,
    chunk_size=256,
    progress=True,
) -> dict[str, DecodedSplit]:
    """Decode every row of ``frame`` once into memory-mapped uint8 arrays.

    ``frame`` has the columns of ``carclf.data.load_stanford_cars`` (path,
    split, class_id, x1, y1, x2, y2, and optionally width/height, which are
    checked against the decoded size). Returns one :class:`DecodedSplit` per
    split present ("train" first, then "test"), rows in frame order, images
    opened read-only.

    The result is the stage ``"decoded"`` of ``cache``, keyed by image_size,
    crop, margin, a fingerprint of the frame's rows, and ``deps``; its arrays
    are ``<split>.npy`` in ``cache.artifact_dir("decoded", key)``. The build
    runs ``workers`` threads (default: all cores) and is resumable chunk by
    chunk (``chunk_size`` rows); a finished build is only opened again.
    """
    image_size = _check_size(image_size)
    _check_crop(crop, margin)
    if int(chunk_size) <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size!r}")
    chunk_size = int(chunk_size)
    _check_frame(frame)

    splits = _ordered_splits(frame)
    # The full class list when the frame carries it: a class with no images still gets its column.
    num_classes = len(frame.attrs.get("class_names") or ()) or int(frame["class_id"].max()) + 1
    config = {
        "version": DECODE_VERSION,
        "image_size": list(image_size),
        "crop": crop,
        "margin": float(margin) if crop == "box" else None,
        "frame": frame_fingerprint(frame),
        "rows": {s: int((frame["split"].astype(str) == s).sum()) for s in splits},
        "num_classes": num_classes,
    }
    deps = list(deps)
    key = cache.key(STAGE, config, deps)
    shapes = {s: (config["rows"][s], *image_size, 3) for s in splits}

    folder = cache.artifact_dir(STAGE, key, create=False)
    if not all(_is_complete_npy(folder / f"{s}.npy", shapes[s]) for s in splits):
        if cache.exists(STAGE, key) or cache.parts_dir(STAGE, key).exists():
            log.warning("decoded arrays in %s are missing or damaged; rebuilding", folder)
            cache.invalidate(STAGE, key)
        folder = cache.artifact_dir(STAGE, key)
        for split in splits:
            if not _is_complete_npy(folder / f"{split}.npy", shapes[split]):
                _create_npy(folder / f"{split}.npy", shapes[split])

    units, bounds = [], {}
    for split in splits:
        for start in range(0, shapes[split][0], chunk_size):
            stop = min(start + chunk_size, shapes[split][0])
            unit = f"{split}-{start:07d}-{stop:07d}"
            units.append(unit)
            bounds[unit] = (split, start, stop)
    parts = cache.parts_dir(STAGE, key)
    done_rows = sum(
        stop - start for unit, (_, start, stop) in bounds.items() if (parts / f"{unit_filename(unit)}.pkl").is_file()
    )
    plan = _plan(frame, splits)
    builder = _Builder(
        folder, plan, image_size, crop, margin, workers, progress, sum(config["rows"].values()), done_rows
    )

    def combine(done):
        return {
            "image_size": image_size,
            "crop": crop,
            "margin": config["margin"],
            "num_classes": num_classes,
            "splits": {
                s: {
                    "file": f"{s}.npy",
                    "shape": shapes[s],
                    "class_ids": plan[s]["class_ids"],
                    "paths": plan[s]["paths"],
                }
                for s in splits
            },
        }

    try:
        result = cache.run_units(
            STAGE, config, units, lambda unit: builder.chunk(*bounds[unit]), combine=combine, deps=deps, progress=False
        )
    finally:
        builder.close()

    descriptor = result.value
    out = {}
    for split, info in descriptor["splits"].items():
        images = np.load(folder / info["file"], mmap_mode="r")
        out[split] = DecodedSplit(images, info["class_ids"], info["paths"], split, descriptor["num_classes"])
    return out


def open_decoded(cache: StageCache, key: str) -> dict[str, DecodedSplit]:
    """Open a finished decoded cache by its key (read-only), without the frame."""
    descriptor = load_pickle(cache.path(STAGE, key))["value"]
    folder = cache.artifact_dir(STAGE, key, create=False)
    return {
        split: DecodedSplit(
            np.load(folder / info["file"], mmap_mode="r"),
            info["class_ids"],
            info["paths"],
            split,
            descriptor["num_classes"],
        )
        for split, info in descriptor["splits"].items()
    }


__all__ = [
    "DecodedSplit",
    "STAGE",
    "build_decoded_cache",
    "crop_window",
    "decode_image",
    "epoch_order",
    "frame_fingerprint",
    "open_decoded",
]
