"""The decoded image cache: cropped, resized uint8 images in memory-mapped ``.npy``.

JPEGs are decoded once, by :func:`build_decoded_cache`, into one
``(N, H, W, 3)`` uint8 array per split, stored in the stage cache's artifact
folder of stage ``"decoded"``. Training then reads batches from those memmaps
(:meth:`DecodedSplit.batches`) without touching a JPEG again.

The build is resumable: it works in chunks of rows, and each chunk is recorded
done (through :meth:`StageCache.run_units`) only after its rows are written and
flushed, so a killed build redoes only its unfinished chunks. Each image is
decoded whole (:mod:`carclf.images`); the ones that cannot be are named or left
out, and the arrays are checksummed by chunk (docs/integrity.md).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from carclf import images
from carclf.cache import StageCache, load_pickle, unit_filename
from carclf.memmaps import create_npy, damaged_chunks, is_complete_npy, rows_sha256, shrink_npy, write_stamp
from carclf.paths import usable_cpus
from carclf.settings import DecodeSettings, check_positive_int
from carclf.splits import DecodedSplit

log = logging.getLogger("carclf.decoded")

#: The stage name of the decoded image cache in the StageCache.
STAGE = "decoded"

#: Bumped when decoding itself changes (so old caches are not reused). 2: decoded whole by Pillow, the rows
#: that cannot be left out.
DECODE_VERSION = 2

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


def _decode(path, box, settings: DecodeSettings, expect_wh=None, *, orient=False, sha256=None):
    # Not oriented by default: Stanford Cars boxes are in raw pixel coordinates, so an EXIF rotation
    # must not be applied before cropping (predict orients photos from outside the dataset).
    image = images.read_image(path, orient=orient, sha256=sha256)
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


def decode_image(path, box=None, settings: DecodeSettings | None = None, orient: bool = False) -> np.ndarray:
    """Decode one image to uint8 RGB of shape ``(*settings.image_size, 3)``.

    With ``crop="box"`` the image is cut to ``box`` (x1, y1, x2, y2; slice bounds) grown by ``margin`` of
    the box's width/height on each side and clipped to the image (``margin=0``: the tight box); with
    ``crop="full"`` (or no box) the whole image is kept. Grayscale images come out as three equal channels.
    ``orient`` applies the file's EXIF orientation first (a photo from outside the dataset). Raises
    :class:`carclf.images.ImageError` (a ValueError) naming the file when it cannot be decoded whole.
    """
    return _decode(path, box, settings or DecodeSettings(), orient=orient)


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
    """sha256 of the rows that decide the cache: split, path, box, class id (and the file's sha256 if given)."""
    columns = [frame["split"].astype(str).tolist(), frame["path"].astype(str).tolist()]
    columns += [frame[c].astype("int64").tolist() for c in (*_BOX, "class_id")]
    if "sha256" in frame.columns:
        columns.append(frame["sha256"].astype(str).tolist())
    text = json.dumps(list(zip(*columns)), separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


#: The problem kinds of a decoded image: left out of the arrays, or kept with what the decoder said.
UNREADABLE, WARNED = "unreadable_images", "decoder_warnings"


class UndecodableImagesError(ValueError):
    """Images that cannot be decoded whole (``build_decoded_cache(..., on_error="raise")``)."""

    def __init__(self, problems):
        self.problems = list(problems)
        shown = "; ".join(p["detail"] for p in self.problems[:3])
        more = f" (and {len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        super().__init__(f"{len(self.problems)} image(s) cannot be decoded whole: {shown}{more}")


class _Builder:
    """Decodes chunks of rows into the writable memmaps; made lazily.

    A chunk's rows that decode are written one after another from the chunk's offset (the rows kept by the
    chunks before it), so images that cannot be decoded leave no gap; the arrays are cut to the rows kept
    once every chunk is done (docs/integrity.md).
    """

    def __init__(self, folder, *, plan, settings, bounds, parts, workers, progress, total, on_error):
        self.folder, self.plan, self.settings = folder, plan, settings
        self.bounds, self.parts, self.on_error = bounds, parts, on_error
        self.workers = max(1, int(workers or usable_cpus()))
        self.progress, self.total = progress, total
        self.pool = self.bar = None
        self.arrays, self.values = {}, {}
        self._warnings = contextlib.ExitStack()

    def array(self, split):
        if split not in self.arrays:
            self.arrays[split] = np.lib.format.open_memmap(self.folder / f"{split}.npy", mode="r+")
        return self.arrays[split]

    def _start(self, initial):
        from tqdm.auto import tqdm

        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="carclf-decode")
        self.bar = tqdm(total=self.total, initial=initial, desc="decoding", unit="img", disable=not self.progress)
        self._warnings.enter_context(images.recording_warnings())

    def _one(self, rec):
        """``(image or None, [(kind, detail)])`` of one row: every byte of the file decoded, warnings kept."""
        with images.file_warnings() as caught:
            try:
                image = _decode(rec["path"], rec["box"], self.settings, rec["wh"], sha256=rec.get("sha256"))
            except ValueError as exc:  # ImageError, a size that disagrees with the frame, an empty crop
                return None, [(UNREADABLE, str(exc))]
        return image, [(WARNED, f"{rec['path']}: {text}") for text in caught]

    def _decode_rows(self, split, rows):
        records = self.plan[split]["records"]
        futures = [self.pool.submit(self._one, records[row]) for row in rows]
        try:
            for row, future in zip(rows, futures):
                image, found = future.result()
                self.bar.update(1)
                yield (
                    row,
                    image,
                    [{"split": split, "path": records[row]["path"], "kind": k, "detail": d} for k, d in found],
                )
        finally:
            for future in futures:
                future.cancel()

    def _offset(self, unit):
        split, start, _ = self.bounds[unit]
        earlier = [u for u, (s, _, stop) in self.bounds.items() if s == split and stop <= start]
        return sum(len(self._value(u)["rows"]) for u in earlier)

    def _value(self, unit):
        if unit not in self.values:  # finished by an earlier, interrupted build
            self.values[unit] = load_pickle(self.parts / f"{unit_filename(unit)}.pkl")
        return self.values[unit]

    def chunk(self, unit):
        split, start, stop = self.bounds[unit]
        if self.pool is None:
            self._start(initial=sum(b - a for u, (_, a, b) in self.bounds.items() if u != unit and self._done(u)))
        array, offset = self.array(split), self._offset(unit)
        kept, problems = [], []
        for row, image, found in self._decode_rows(split, range(start, stop)):
            problems += found
            if image is not None:
                array[offset + len(kept)] = image
                kept.append(row)
        array.flush()  # rows on disk before run_units records the chunk done
        unreadable = [p for p in problems if p["kind"] == UNREADABLE]
        if unreadable and self.on_error == "raise":
            raise UndecodableImagesError(unreadable)
        for p in problems:
            log.warning("%s %s: %s", p["kind"].replace("_", " "), split, p["detail"])
        self.values[unit] = {
            "split": split,
            "offset": offset,
            "rows": kept,
            "problems": problems,
            "sha256": rows_sha256(array, offset, offset + len(kept)),
        }
        return self.values[unit]

    def _done(self, unit):
        return unit in self.values or (self.parts / f"{unit_filename(unit)}.pkl").is_file()

    def finish(self, done, descriptor):
        """The stage's value once every chunk is done: each split cut to its rows kept, its chunks' sums."""
        self.close()
        chunks = {split: [] for split in descriptor["splits"]}
        for value in done.values():
            chunks[value["split"]].append({k: value[k] for k in ("offset", "rows", "sha256")})
        for split, info in descriptor["splits"].items():
            rows = [row for chunk in chunks[split] for row in chunk["rows"]]
            if not rows:
                raise ValueError(f"none of the {info['shape'][0]} {split} images could be decoded; see the log")
            if len(rows) < info["shape"][0]:
                shrink_npy(self.folder / info["file"], len(rows))
            write_stamp(self.folder / info["file"])
            info.update(
                shape=(len(rows), *info["shape"][1:]),
                class_ids=info["class_ids"][rows],
                paths=[info["paths"][row] for row in rows],
                chunks=chunks[split],
            )
        descriptor["problems"] = [p for value in done.values() for p in value["problems"]]
        return descriptor

    def repair(self, descriptor) -> bool:
        """Decode again the chunks of a finished cache whose rows no longer match their sha256 (only those).
        False when an array is gone or the rows decode differently now: the whole cache must be rebuilt."""
        for split, info in descriptor["splits"].items():
            path = self.folder / info["file"]
            if not is_complete_npy(path, info["shape"]):
                log.warning("decoded arrays in %s are missing or damaged; rebuilding", self.folder)
                return False
            for chunk in damaged_chunks(path, info["chunks"]):
                log.warning(
                    "%s: rows %d-%d are damaged; decoding them again",
                    path,
                    chunk["offset"],
                    chunk["offset"] + len(chunk["rows"]),
                )
                if self.pool is None:
                    self._start(initial=0)
                array = self.array(split)
                for i, (_, image, _) in enumerate(self._decode_rows(split, chunk["rows"])):
                    if image is None:
                        return False
                    array[chunk["offset"] + i] = image
                array.flush()
                if rows_sha256(array, chunk["offset"], chunk["offset"] + len(chunk["rows"])) != chunk["sha256"]:
                    return False
            self.close()
            write_stamp(path)
        return True

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.bar.close()
            self.pool = None
        self._warnings.close()
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
        sums = rows["sha256"].tolist() if "sha256" in rows.columns else [None] * len(rows)  # files carclf wrote
        records = [
            {
                "path": str(p),
                "box": tuple(int(v) for v in b),
                "wh": None if s is None else (int(s[0]), int(s[1])),
                "sha256": sha,
            }
            for p, b, s, sha in zip(rows["path"], boxes, sizes, sums)
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
    on_error="raise",
) -> dict[str, DecodedSplit]:
    """Decode every row of ``frame`` once into memory-mapped uint8 arrays.

    ``frame`` has the columns of ``carclf.data.load_stanford_cars`` (path, split, class_id, x1, y1, x2, y2,
    and optionally width/height, which are checked against the decoded size, and sha256, which the file
    must match). ``settings`` (:class:`carclf.settings.DecodeSettings`) says how: the image size, box or
    whole image, the margin. Returns one :class:`DecodedSplit` per split present ("train" first, then
    "test"), rows in frame order, images opened read-only.

    Every file is decoded whole (:func:`carclf.images.read_image`). A file that cannot be, truncated or
    damaged, raises :class:`UndecodableImagesError` naming it (``on_error="raise"``), or is left out of the
    arrays and listed in the result's ``problems`` (``on_error="skip"``; :func:`decode_problems`), as are the
    decoder's warnings. The result is the stage ``"decoded"`` of ``cache``, keyed by the settings, a
    fingerprint of the frame's rows, and ``deps``; its arrays are ``<split>.npy`` in
    ``cache.artifact_dir("decoded", key)``, their space allocated before they are written, their rows
    checksummed by chunk and checked when the cache is opened again (a damaged chunk is decoded again). The
    build runs ``workers`` threads (default: all cores) and is resumable chunk by chunk (``chunk_size``
    rows); one process builds a key at a time, another waits and opens the result.
    """
    settings = settings or DecodeSettings()
    chunk_size = check_positive_int("chunk_size", chunk_size)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    _check_frame(frame)

    splits = _ordered_splits(frame)
    # The full class list when the frame carries it: a class with no images still gets its column.
    num_classes = len(frame.attrs.get("class_names") or ()) or int(frame["class_id"].max()) + 1
    config = _config(settings, frame, splits, num_classes)
    deps = list(deps)
    key = cache.key(STAGE, config, deps)
    shapes = {s: (config["rows"][s], *settings.image_size, 3) for s in splits}
    bounds = _chunks(shapes, chunk_size)
    plan = _plan(frame, splits)
    build = {"plan": plan, "settings": settings, "bounds": bounds, "workers": workers, "progress": progress}
    build.update(total=sum(config["rows"].values()), on_error=on_error)
    with cache.lock(STAGE, key):
        for _ in range(2):
            folder = _ready_arrays(cache, key, shapes) if not cache.exists(STAGE, key) else None
            folder = folder or cache.artifact_dir(STAGE, key, create=False)
            builder = _Builder(folder, parts=cache.parts_dir(STAGE, key), **build)
            try:
                result = cache.run_units(
                    STAGE,
                    config,
                    list(bounds),
                    builder.chunk,
                    combine=functools.partial(
                        builder.finish, descriptor=_descriptor(settings, num_classes, shapes, plan)
                    ),
                    deps=deps,
                    progress=False,
                )
                if not result.loaded or builder.repair(result.value):
                    break
            finally:
                builder.close()
            cache.invalidate(STAGE, key)  # an array is gone or no longer decodes the same: build it again
    return _open(folder, result.value)


def decode_problems(decoded: dict) -> list[dict]:
    """What went wrong decoding the splits of a built cache: ``{split, path, kind, detail}`` per problem,
    ``kind`` being ``"unreadable_images"`` (left out) or ``"decoder_warnings"`` (kept)."""
    return [p for split in decoded.values() for p in getattr(split, "problems", [])]


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
    if all(is_complete_npy(folder / f"{s}.npy", shape) for s, shape in shapes.items()):
        return folder
    if cache.exists(STAGE, key) or cache.parts_dir(STAGE, key).exists():
        log.warning("decoded arrays in %s are missing or damaged; rebuilding", folder)
        cache.invalidate(STAGE, key)
    folder = cache.artifact_dir(STAGE, key)
    for split, shape in shapes.items():
        if not is_complete_npy(folder / f"{split}.npy", shape):
            create_npy(folder / f"{split}.npy", shape)
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
    problems = descriptor.get("problems", [])
    opened = {}
    for split, info in descriptor["splits"].items():
        opened[split] = DecodedSplit(
            np.load(folder / info["file"], mmap_mode="r"),
            info["class_ids"],
            info["paths"],
            split,
            descriptor["num_classes"],
        )
        opened[split].problems = [p for p in problems if p["split"] == split]
    return opened


def open_decoded(cache: StageCache, key: str) -> dict[str, DecodedSplit]:
    """Open a finished decoded cache by its key (read-only), without the frame."""
    return _open(cache.artifact_dir(STAGE, key, create=False), load_pickle(cache.path(STAGE, key))["value"])


__all__ = [
    "STAGE",
    "UNREADABLE",
    "UndecodableImagesError",
    "WARNED",
    "build_decoded_cache",
    "crop_window",
    "decode_image",
    "decode_problems",
    "fit_to",
    "frame_fingerprint",
    "open_decoded",
]
