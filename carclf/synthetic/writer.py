"""Writing a synthetic set in either of the real dataset's layouts, resumably."""

from __future__ import annotations

import csv
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from carclf.cache import atomic_write
from carclf.data import folder_name
from carclf.settings import check_positive_int
from carclf.synthetic.classes import class_table
from carclf.synthetic.drawing import SPLIT_CODE, plan, render

LAYOUTS = ("class-folder", "devkit")


def _csv_bytes(rows) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode("utf-8")


def _mat_bytes(variables: dict) -> bytes:
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, variables)
    data = bytearray(buf.getvalue())
    # savemat stamps the current time into the 116-byte header; a fixed text keeps runs byte-identical.
    data[:116] = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: carclf.synthetic".ljust(116, b" ")
    return bytes(data)


def _uint(value: int):
    # loadmat gives the real files' numbers as the smallest unsigned type that holds them.
    return np.array([[value]], dtype=np.uint8 if 0 <= value < 256 else np.uint16 if 0 <= value < 65536 else np.int32)


def _mat_annotations(records) -> np.ndarray:
    keys = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    out = np.empty((1, len(records)), dtype=[(k, object) for k in keys])
    for i, (fname, box, cid) in enumerate(records):
        for key, value in zip(keys[:4], box):
            out[key][0, i] = _uint(value)
        out["class"][0, i] = _uint(cid)
        out["fname"][0, i] = np.array([fname])
    return out


_MARKER = ".carclf-synthetic.json"


def _claim(root: Path, arguments: dict):
    """Record what is being made in ``root``, refusing a folder that holds something else.

    Resuming skips the images already there, so resuming with other arguments
    would mix two sets; and writing into a real dataset would overwrite its
    annotations.
    """
    marker = root / _MARKER
    if marker.is_file():
        before = json.loads(marker.read_text())
        if before != arguments:
            raise ValueError(
                f"{root} holds a synthetic set made with {before}, not {arguments}: "
                f"use another folder, or delete this one first"
            )
        return
    if root.is_dir() and any(
        (root / n).exists() for n in ("names.csv", "anno_train.csv", "car_data", "cars_train", "devkit")
    ):
        raise ValueError(
            f"{root} holds a dataset that make_synthetic did not write ({_MARKER} is missing): "
            f"refusing to overwrite it; use another folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, json.dumps(arguments, sort_keys=True).encode())


def make_synthetic(
    root,
    n_classes: int = 10,
    per_class_train: int = 24,
    per_class_test: int = 12,
    seed: int = 0,
    layout: str = "class-folder",
    size_range=(96, 640),
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write a synthetic Stanford Cars set under ``root`` in the given layout, and return ``root``.

    ``layout`` is ``"class-folder"`` (the Kaggle copy) or ``"devkit"`` (the
    Stanford release). Images already on disk are kept, so an interrupted run
    resumes (with the same arguments only: a hidden ``.carclf-synthetic.json``
    records them); the annotation files are written last. ``workers`` threads draw
    the images (default: one per CPU).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    check_positive_int("per_class_train", per_class_train)
    check_positive_int("per_class_test", per_class_test)
    lo, hi = size_range
    if not 16 <= lo <= hi:
        raise ValueError(f"size_range must be (min, max) widths with 16 <= min <= max, got {size_range}")
    root = Path(root)
    table = class_table(n_classes)
    _claim(
        root,
        {
            "n_classes": n_classes,
            "per_class_train": per_class_train,
            "per_class_test": per_class_test,
            "seed": seed,
            "layout": layout,
            "size_range": [lo, hi],
        },
    )

    jobs = _jobs(root, table, layout, per_class_train, per_class_test, seed)
    for folder in sorted({job[3].parent for job in jobs}):
        folder.mkdir(parents=True, exist_ok=True)

    def make_one(job):
        split, index, cid, path = job
        drawn = plan(table[cid], split, index, seed, size_range)
        if not path.exists():
            atomic_write(path, render(table[cid], drawn, split, index, seed))
        return split, path.name, drawn.box, cid + 1

    from tqdm.auto import tqdm

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        drawn = pool.map(make_one, jobs)
        results = list(tqdm(drawn, total=len(jobs), disable=not progress, desc=f"synthetic {layout}", unit="img"))
    _write_annotations(root, layout, [c.name for c in table], results)
    return root


def _jobs(root: Path, table, layout, per_class_train, per_class_test, seed) -> list:
    """``(split, index, class id, path)`` of every image, classes shuffled over file numbers as in the real set."""
    jobs = []
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        # its own generator keeps the assignment independent of the images
        rng = np.random.default_rng([seed, SPLIT_CODE[split]])
        ids = rng.permutation(np.repeat(np.arange(len(table)), per_class))
        for index, cid in enumerate(ids):
            name = f"{index + 1:05d}.jpg"
            if layout == "devkit":
                path = root / f"cars_{split}" / name
            else:
                path = root / "car_data" / "car_data" / split / folder_name(table[cid].name) / name
            jobs.append((split, index, int(cid), path))
    return jobs


def _write_annotations(root: Path, layout, names, results):
    """The name and annotation files of the layout, written last: with them on disk, the set is complete."""
    if layout == "class-folder":
        atomic_write(root / "names.csv", _csv_bytes([n] for n in names))
        for split in ("train", "test"):
            rows = [(f, *box, cid) for s, f, box, cid in results if s == split]
            atomic_write(root / f"anno_{split}.csv", _csv_bytes(rows))
        return
    (root / "devkit").mkdir(exist_ok=True)
    cells = np.empty((1, len(names)), dtype=object)
    cells[0, :] = names
    atomic_write(root / "devkit" / "cars_meta.mat", _mat_bytes({"class_names": cells}))
    for split, target in (
        ("train", root / "devkit" / "cars_train_annos.mat"),
        ("test", root / "cars_test_annos_withlabels.mat"),
    ):
        records = [(f, box, cid) for s, f, box, cid in results if s == split]
        atomic_write(target, _mat_bytes({"annotations": _mat_annotations(records)}))
