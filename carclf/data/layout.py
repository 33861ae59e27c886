"""Where the dataset is and which of its two layouts a folder holds."""

from __future__ import annotations

import os
from pathlib import Path

CLASS_FOLDER = "class-folder"
DEVKIT = "devkit"
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

#: Columns of the frame :func:`scan_stanford_cars` returns, in order.
COLUMNS = [
    "path",
    "filename",
    "split",
    "class_id",
    "class_name",
    "x1",
    "y1",
    "x2",
    "y2",
    "width",
    "height",
    "mode",
    "clipped",
    "degenerate",
]

_POINT_ROOT = (
    "point `root` at the folder that holds names.csv, anno_train.csv and car_data/ "
    "(the Kaggle copy) or cars_train/ and devkit/ (the Stanford devkit)"
)
_TEST_MAT = "cars_test_annos_withlabels.mat"

# Windows forbids more characters in a name than POSIX ("/" and NUL); replacing
# the wider set means a copy unpacked on either system maps the same way.
_BAD_NAME_CHARS = frozenset('<>:"/\\|?*')


class DatasetError(ValueError):
    """The dataset cannot be read; the message names the file and what to do."""


def folder_name(class_name: str) -> str:
    """The folder that holds a class's images in the class-folder layout.

    Characters that cannot be in a folder name become "-", which is how the
    Kaggle copy stores ``Ram C/V Cargo Van Minivan 2012`` (as ``Ram C-V ...``).
    """
    return "".join("-" if c in _BAD_NAME_CHARS or ord(c) < 32 else c for c in class_name)


def _root(root) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"dataset root {path} {what}: {_POINT_ROOT}")
    return path.resolve()


_MARKERS = {
    # (files that identify the layout, files that only add weight to it)
    CLASS_FOLDER: (("names.csv", "anno_train.csv", "car_data"), ("anno_test.csv",)),
    DEVKIT: (
        ("cars_train", "devkit/cars_meta.mat", "devkit/cars_train_annos.mat"),
        ("cars_test", _TEST_MAT, f"devkit/{_TEST_MAT}"),
    ),
}


def _markers(path: Path) -> dict:
    """The layout files present in ``path``, per layout; none unless an identifying one is there.

    A test-annotation file alone does not count: a folder named ``devkit`` that
    holds one would make its parent look like a devkit root.
    """
    found = {}
    for layout, (identifying, extra) in _MARKERS.items():
        present = [n for n in identifying + extra if (path / n).exists()]
        found[layout] = present if any(n in present for n in identifying) else []
    return found


def detect_layout(root) -> str:
    """``"class-folder"`` or ``"devkit"``, judged by which layout's files are in ``root``."""
    path = _root(root)
    found = _markers(path)
    if not found[CLASS_FOLDER] and not found[DEVKIT]:
        # The commonest mistake is pointing one folder too high or too low.
        hints = [c for c in sorted(path.iterdir()) if c.is_dir() and any(_markers(c).values())]
        hint = f" (did you mean {hints[0]}?)" if hints else ""
        listing = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        raise DatasetError(f"no Stanford Cars layout recognised in {path}: it holds {listing}{hint}; {_POINT_ROOT}")
    if len(found[CLASS_FOLDER]) == len(found[DEVKIT]):
        return CLASS_FOLDER if "names.csv" in found[CLASS_FOLDER] else DEVKIT
    return max(found, key=lambda k: len(found[k]))


def _test_mat(path: Path) -> Path:
    for candidate in (path / _TEST_MAT, path / "devkit" / _TEST_MAT):
        if candidate.is_file():
            return candidate
    unlabelled = [p for p in (path / "cars_test_annos.mat", path / "devkit" / "cars_test_annos.mat") if p.is_file()]
    if unlabelled:
        raise DatasetError(
            f"{unlabelled[0]} has no class labels: download {_TEST_MAT} and put it in {path} or {path / 'devkit'}"
        )
    return path / _TEST_MAT


def _is_image(entry: os.DirEntry) -> bool:
    # Dot-files are skipped: synthetic.py writes ".name.tmp" files while it works.
    return not entry.name.startswith(".") and entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file()


def _image_dir(path: Path, layout: str, split: str) -> Path:
    if layout == DEVKIT:
        candidates = [path / f"cars_{split}"]
    else:
        # Some re-packagings drop the doubled car_data/ level.
        candidates = [path / "car_data" / "car_data" / split, path / "car_data" / split]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DatasetError(f"image folder {candidates[0]} not found: {_POINT_ROOT}")
