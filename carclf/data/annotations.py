"""The class names and the annotations, from either layout's files."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from carclf.data.layout import (
    _POINT_ROOT,
    _TEST_MAT,
    CLASS_FOLDER,
    DEVKIT,
    IMAGE_EXTENSIONS,
    DatasetError,
    _root,
    _test_mat,
    detect_layout,
)


def _loadmat(path: Path, key: str, fix: str):
    from scipy.io import loadmat  # scipy.io is slow to import; only the devkit needs it

    if not path.is_file():
        raise DatasetError(f"{path.name} not found in {path.parent}: {fix}")
    try:
        data = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for a damaged file
        raise DatasetError(f"{path} cannot be read as a MATLAB file ({exc}): {fix}") from exc
    if key not in data:
        variables = sorted(k for k in data if not k.startswith("__"))
        raise DatasetError(f"{path} holds no `{key}` variable (it has {variables}): {fix}")
    return data[key]


def _mat_value(cell):
    """A scalar out of loadmat's nesting (``array([[39]])``, ``array(['00001.jpg'])``)."""
    value = np.asarray(cell).ravel()
    if value.size != 1:
        raise ValueError(f"expected one value, got {value.size}")
    return value[0]


def class_names(root, layout: str | None = None) -> list:
    """The class names in class-id order (0-based list; file line k is id k, 1-based)."""
    path = _root(root)
    layout = layout or detect_layout(path)
    if layout == DEVKIT:
        cells = _loadmat(
            path / "devkit" / "cars_meta.mat",
            "class_names",
            "it ships in the Stanford devkit (car_devkit.tgz) under devkit/",
        )
        names = [str(_mat_value(c)) for c in np.asarray(cells).ravel()]
        source = path / "devkit" / "cars_meta.mat"
    else:
        source = path / "names.csv"
        if not source.is_file():
            raise DatasetError(f"names.csv not found in {path}: {_POINT_ROOT}")
        with open(source, newline="", encoding="utf-8-sig") as f:
            # A name with an unquoted comma would split; joining it back is harmless.
            names = [",".join(row).strip() for row in csv.reader(f)]
        while names and not names[-1]:
            names.pop()
        blank = [i + 1 for i, n in enumerate(names) if not n]
        if blank:
            raise DatasetError(
                f"{source}: line {blank[0]} is empty; every line up to the last must hold "
                f"one class name, because line k is class id k"
            )
    if not names:
        raise DatasetError(f"{source} holds no class names: restore it from the dataset download")
    return names


class _Annotation(NamedTuple):
    split: str
    where: str  # "anno_train.csv line 7": where to look when it is wrong
    filename: str
    box: tuple
    class_id: int  # 1-based, as on disk


def _read_csv_annotations(path: Path, split: str) -> list:
    if not path.is_file():
        raise DatasetError(f"{path.name} not found in {path.parent}: {_POINT_ROOT}")
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for number, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 6:
                raise DatasetError(
                    f"{path}: line {number} has {len(row)} fields, expected 6 "
                    f"(filename,x1,y1,x2,y2,class_id): {','.join(row)!r}"
                )
            try:
                x1, y1, x2, y2, cid = (int(v) for v in row[1:])
            except ValueError:
                if number == 1 and not row[0].lower().endswith(IMAGE_EXTENSIONS):
                    continue  # a header line, added by some re-packagings
                raise DatasetError(
                    f"{path}: line {number} has a non-integer box or class id "
                    f"(expected filename,x1,y1,x2,y2,class_id): {','.join(row)!r}"
                ) from None
            rows.append(_Annotation(split, f"{path.name} line {number}", row[0].strip(), (x1, y1, x2, y2), cid))
    return rows


def _read_mat_annotations(path: Path, split: str) -> list:
    records = _loadmat(path, "annotations", f"it belongs in {path.parent} (see the Stanford Cars download page)")
    records = np.asarray(records).ravel()
    wanted = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    have = records.dtype.names or ()
    if any(name not in have for name in wanted):
        raise DatasetError(
            f"{path}: `annotations` lacks fields {[n for n in wanted if n not in have]} "
            f"(it has {list(have)}); the test set needs {_TEST_MAT}, which carries the labels"
        )
    rows = []
    for i, rec in enumerate(records, start=1):
        try:
            # int() first: loadmat returns uint8/uint16, where 0 - 1 wraps round.
            x1, y1, x2, y2, cid = (int(_mat_value(rec[k])) for k in wanted[:5])
            fname = os.path.basename(str(_mat_value(rec["fname"])))
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{path}: record {i} of `annotations` is malformed ({exc})") from None
        rows.append(_Annotation(split, f"{path.name} record {i}", fname, (x1, y1, x2, y2), cid))
    return rows


def read_annotations(path: Path, layout: str, split: str) -> list:
    if layout == CLASS_FOLDER:
        return _read_csv_annotations(path / f"anno_{split}.csv", split)
    mat = path / "devkit" / "cars_train_annos.mat" if split == "train" else _test_mat(path)
    return _read_mat_annotations(mat, split)
