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
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from carclf.cache import StageCache, load_pickle, unit_filename
from carclf.paths import usable_cpus
from carclf.settings import DecodeSettings, check_positive_int
from carclf.splits import DecodedSplit

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


def _decode(path, box, settings: DecodeSettings, expect_wh=None):
    # IGNORE_ORIENTATION: Stanford Cars boxes are in raw pixel coordinates, so an
    # EXIF rotation must not be applied before cropping.
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"cv2 cannot decode image {path}")
    height, width = image.shape[:2]
    if expect_wh is not None and (width, height) != tuple(expect_wh):
        raise ValueError(f"image {path} decodes to {width}x{height} but the frame says {expect_wh[0]}x{expect_wh[1]}")
    if settings.crop == "box" and box is not None:
        left, top, right, bottom = crop_window(box, width, height, settings.margin)
        if right <= left or bottom <= top:
            raise ValueError(f"empty crop box {tuple(box)} for image {path} ({width}x{height})")
        image = image[top:bottom, left:right]
    return cv2.cvtColor(fit_to(image, settings.image_size, settings.resize), cv2.COLOR_BGR2RGB)


def fit_to(image: np.ndarray, size, resize: str = "stretch") -> np.ndarray:
    """``image`` at ``size`` (height, width): ``"stretch"`` whatever its aspect, ``"pad"`` letterboxed (its
    aspect kept, the rest black), ``"center"`` its short side to the size and the centre cropped."""
    out_h, out_w = size
    height, width = image.shape[:2]
    if resize == "stretch":
        return cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_AREA)
    scale = (min if resize == "pad" else max)(out_w / width, out_h / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    scaled = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA).reshape(new_h, new_w, -1)
    if resize == "center":
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
        cropped = np.ascontiguousarray(scaled[top : top + out_h, left : left + out_w])
        return cropped.reshape((out_h, out_w, *image.shape[2:]))
    canvas = np.zeros((out_h, out_w, scaled.shape[2]), dtype=image.dtype)
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = scaled
    return canvas.reshape((out_h, out_w, *image.shape[2:]))


def decode_image(path, box=None, settings: DecodeSettings | None = None) -> np.ndarray:
    """Decode one image to uint8 RGB of shape ``(*settings.image_size, 3)``.

    With ``crop="box"`` the image is cut to ``box`` (x1, y1, x2, y2; slice bounds) grown by ``margin`` of
    the box's width/height on each side and clipped to the image (``margin=0``: the tight box); with
    ``crop="full"`` (or no box) the whole image is kept. Grayscale images come out as three equal channels.
    Raises ValueError naming the file when cv2 cannot decode it.
    """
    return _decode(path, box, settings or DecodeSettings())


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

    def __init__(self, folder, plan, settings, workers, progress, total, done_rows):
        self.folder = folder
        self.plan = plan
        self.settings = settings
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
        images[row] = _decode(rec["path"], rec["box"], self.settings, rec["wh"])

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
    settings: DecodeSettings | None = None,
    *,
    deps=(),
    workers=None,
    chunk_size=256,
    progress=True,
) -> dict[str, DecodedSplit]:
    """Decode every row of ``frame`` once into memory-mapped uint8 arrays.

    ``frame`` has the columns of ``carclf.data.load_stanford_cars`` (path, split, class_id, x1, y1, x2, y2,
    and optionally width/height, which are checked against the decoded size). ``settings``
    (:class:`carclf.settings.DecodeSettings`) says how: the image size, box or whole image, the margin.
    Returns one :class:`DecodedSplit` per split present ("train" first, then "test"), rows in frame order,
    images opened read-only.

    The result is the stage ``"decoded"`` of ``cache``, keyed by the settings, a fingerprint of the frame's
    rows, and ``deps``; its arrays are ``<split>.npy`` in ``cache.artifact_dir("decoded", key)``. The build
    runs ``workers`` threads (default: all cores) and is resumable chunk by chunk (``chunk_size`` rows); a
    finished build is only opened again.
    """
    settings = settings or DecodeSettings()
    chunk_size = check_positive_int("chunk_size", chunk_size)
    _check_frame(frame)

    splits = _ordered_splits(frame)
    # The full class list when the frame carries it: a class with no images still gets its column.
    num_classes = len(frame.attrs.get("class_names") or ()) or int(frame["class_id"].max()) + 1
    config = _config(settings, frame, splits, num_classes)
    deps = list(deps)
    key = cache.key(STAGE, config, deps)
    shapes = {s: (config["rows"][s], *settings.image_size, 3) for s in splits}

    folder = _ready_arrays(cache, key, shapes)
    bounds = _chunks(shapes, chunk_size)
    parts = cache.parts_dir(STAGE, key)
    done_rows = sum(
        stop - start for unit, (_, start, stop) in bounds.items() if (parts / f"{unit_filename(unit)}.pkl").is_file()
    )
    plan = _plan(frame, splits)
    builder = _Builder(folder, plan, settings, workers, progress, sum(config["rows"].values()), done_rows)
    descriptor = _descriptor(settings, num_classes, shapes, plan)
    try:
        result = cache.run_units(
            STAGE,
            config,
            list(bounds),
            lambda unit: builder.chunk(*bounds[unit]),
            combine=lambda done: descriptor,
            deps=deps,
            progress=False,
        )
    finally:
        builder.close()
    return _open(folder, result.value)


def _descriptor(settings: DecodeSettings, num_classes, shapes, plan) -> dict:
    """The stage's value: how the images were decoded, and each split's file, shape, labels and paths."""
    files = {
        s: {"file": f"{s}.npy", "shape": shapes[s], "class_ids": plan[s]["class_ids"], "paths": plan[s]["paths"]}
        for s in shapes
    }
    margin = settings.margin if settings.crop == "box" else None
    return {
        "image_size": settings.image_size,
        "crop": settings.crop,
        "margin": margin,
        "num_classes": num_classes,
        "splits": files,
    }


def _config(settings: DecodeSettings, frame, splits, num_classes) -> dict:
    """What the decoded cache's key covers: how images are decoded and which rows are decoded."""
    return {
        "version": DECODE_VERSION,
        "settings": settings if settings.crop == "box" else replace(settings, margin=0.0),  # no margin without a box
        "frame": frame_fingerprint(frame),
        "rows": {s: int((frame["split"].astype(str) == s).sum()) for s in splits},
        "num_classes": num_classes,
    }


def _ready_arrays(cache: StageCache, key: str, shapes: dict) -> Path:
    """The stage's folder with a whole (possibly still empty) ``<split>.npy`` of each shape; a damaged or
    missing array invalidates what was recorded of the stage, so its rows are decoded again."""
    folder = cache.artifact_dir(STAGE, key, create=False)
    if all(_is_complete_npy(folder / f"{s}.npy", shape) for s, shape in shapes.items()):
        return folder
    if cache.exists(STAGE, key) or cache.parts_dir(STAGE, key).exists():
        log.warning("decoded arrays in %s are missing or damaged; rebuilding", folder)
        cache.invalidate(STAGE, key)
    folder = cache.artifact_dir(STAGE, key)
    for split, shape in shapes.items():
        if not _is_complete_npy(folder / f"{split}.npy", shape):
            _create_npy(folder / f"{split}.npy", shape)
    return folder


def _chunks(shapes: dict, chunk_size: int) -> dict:
    """``{unit: (split, start, stop)}``: the rows of every split in chunks, the units of the stage."""
    bounds = {}
    for split, shape in shapes.items():
        for start in range(0, shape[0], chunk_size):
            stop = min(start + chunk_size, shape[0])
            bounds[f"{split}-{start:07d}-{stop:07d}"] = (split, start, stop)
    return bounds


def _open(folder: Path, descriptor: dict) -> dict[str, DecodedSplit]:
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


def open_decoded(cache: StageCache, key: str) -> dict[str, DecodedSplit]:
    """Open a finished decoded cache by its key (read-only), without the frame."""
    return _open(cache.artifact_dir(STAGE, key, create=False), load_pickle(cache.path(STAGE, key))["value"])


__all__ = [
    "STAGE",
    "build_decoded_cache",
    "crop_window",
    "decode_image",
    "fit_to",
    "frame_fingerprint",
    "open_decoded",
]
