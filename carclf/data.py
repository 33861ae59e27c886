"""The Stanford Cars dataset on disk: find it, read it, and say what is wrong with it.

Two layouts exist in the wild and both are read:

* ``class-folder`` (the Kaggle copy): ``names.csv``, ``anno_train.csv``,
  ``anno_test.csv`` and ``car_data/car_data/{train,test}/<class folder>/<file>.jpg``;
* ``devkit`` (the Stanford release): ``cars_train/``, ``cars_test/``,
  ``devkit/cars_meta.mat``, ``devkit/cars_train_annos.mat`` and
  ``cars_test_annos_withlabels.mat`` (at the root or under ``devkit/``).

Problems that leave a usable dataset (a missing file, a box off the image...)
are collected in a :class:`ValidationReport`; problems that do not raise
:class:`DatasetError` with a message that names the file and the fix.

This module must not import TensorFlow or Keras: it runs in worker processes.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

log = logging.getLogger("carclf.data")

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


# --------------------------------------------------------------------------- report


class Problem(NamedTuple):
    """One thing wrong with one file."""

    split: str
    file: str
    detail: str


@dataclass
class ValidationReport:
    """Everything :func:`scan_stanford_cars` found wrong, by kind.

    Every annotation or image left out of the frame is listed here. Clipped
    boxes are listed too but do not make the report not ``ok``: the real
    annotations cross the border by a few pixels, and clipping fixes them.
    """

    root: str = ""
    layout: str = ""
    #: Annotation rows read and images kept in the frame, per split.
    annotations: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    missing_files: list = field(default_factory=list)
    unannotated_images: list = field(default_factory=list)
    unknown_class_ids: list = field(default_factory=list)
    duplicate_annotations: list = field(default_factory=list)
    unreadable_images: list = field(default_factory=list)
    degenerate_boxes: list = field(default_factory=list)
    folder_mismatches: list = field(default_factory=list)
    unknown_folders: list = field(default_factory=list)
    clipped_boxes: list = field(default_factory=list)

    #: Kinds that are fixed up rather than wrong; they do not fail ``ok``/strict mode.
    NOTES = ("clipped_boxes",)

    def _kinds(self):
        return [f.name for f in fields(self) if isinstance(getattr(self, f.name), list)]

    def counts(self) -> dict:
        """Number of problems of each kind, in a fixed order."""
        return {kind: len(getattr(self, kind)) for kind in self._kinds()}

    def problems(self, include_notes: bool = True) -> list:
        """``(kind, Problem)`` pairs, all kinds in order."""
        return [
            (kind, p) for kind in self._kinds() if include_notes or kind not in self.NOTES for p in getattr(self, kind)
        ]

    @property
    def ok(self) -> bool:
        """True when nothing was left out or misplaced (clipped boxes allowed)."""
        return not self.problems(include_notes=False)

    def summary(self) -> str:
        """A short multi-line account: where, what was kept, and each count."""
        kept = ", ".join(f"{s} {self.images.get(s, 0)}/{self.annotations.get(s, 0)}" for s in SPLITS)
        lines = [f"Stanford Cars at {self.root} ({self.layout} layout)", f"  images kept / annotated: {kept}"]
        lines += [f"  {kind.replace('_', ' ')}: {n}" for kind, n in self.counts().items()]
        lines.append("  status: " + ("ok" if self.ok else "problems found (see report.to_frame())"))
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        """One row per problem: ``problem``, ``split``, ``file``, ``detail``."""
        rows = [(kind, *p) for kind, p in self.problems()]
        return pd.DataFrame(rows, columns=["problem", "split", "file", "detail"])


# --------------------------------------------------------------------------- layout


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


# --------------------------------------------------------------------------- annotations


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


def _read_annotations(path: Path, layout: str, split: str) -> list:
    if layout == CLASS_FOLDER:
        return _read_csv_annotations(path / f"anno_{split}.csv", split)
    mat = path / "devkit" / "cars_train_annos.mat" if split == "train" else _test_mat(path)
    return _read_mat_annotations(mat, split)


# --------------------------------------------------------------------------- files


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


def _locate_class_folder(folder: Path, anns: list, names: list, report: ValidationReport, split: str):
    """``(annotation, path)`` for each annotation whose image is on disk."""
    on_disk = {}
    loose = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("."):
                with os.scandir(entry.path) as files:
                    on_disk[entry.name] = {f.name for f in files if _is_image(f)}
            elif _is_image(entry):
                loose.append(entry.name)
    known = {folder_name(n) for n in names}
    for name in sorted(set(on_disk) - known):
        report.unknown_folders.append(
            Problem(
                split,
                name,
                f"{len(on_disk[name])} images in {folder / name}; no class name in names.csv maps to this folder",
            )
        )
    anywhere = {}
    for name in sorted(on_disk):
        for f in on_disk[name]:
            anywhere.setdefault(f, name)
    for f in loose:
        anywhere.setdefault(f, "")

    used, seen, found = set(), set(), []
    for ann in anns:
        expected = folder_name(names[ann.class_id - 1]) if 1 <= ann.class_id <= len(names) else None
        actual = expected if ann.filename in on_disk.get(expected, ()) else anywhere.get(ann.filename)
        if actual is not None:
            used.add((actual, ann.filename))
        if ann.filename in seen:
            report.duplicate_annotations.append(
                Problem(split, ann.filename, f"{ann.where} repeats an earlier row; kept the first")
            )
            continue
        seen.add(ann.filename)
        if expected is None:
            report.unknown_class_ids.append(
                Problem(split, ann.filename, f"{ann.where}: class id {ann.class_id} is not in 1..{len(names)}")
            )
        elif actual is None:
            report.missing_files.append(
                Problem(split, ann.filename, f"{ann.where}: not in {folder / expected} nor anywhere under {folder}")
            )
        else:
            if actual != expected:
                report.folder_mismatches.append(
                    Problem(
                        split,
                        ann.filename,
                        f"{ann.where} says class {ann.class_id} "
                        f"({expected!r}) but the file is in {actual or '.'!r}; "
                        f"used it, labelled by the annotation",
                    )
                )
            found.append((ann, os.path.join(folder, actual, ann.filename)))
    for name, files in sorted(on_disk.items()):
        for f in sorted(files):
            if (name, f) not in used:
                report.unannotated_images.append(
                    Problem(split, f"{name}/{f}", f"in {folder / name}, no row in anno_{split}.csv")
                )
    for f in sorted(loose):
        if ("", f) not in used:
            report.unannotated_images.append(Problem(split, f, f"loose in {folder}, no row in anno_{split}.csv"))
    return found


def _locate_devkit(folder: Path, anns: list, names: list, report: ValidationReport, split: str):
    with os.scandir(folder) as entries:
        on_disk = {e.name for e in entries if _is_image(e)}
    seen, found = set(), []
    for ann in anns:
        if ann.filename in seen:
            report.duplicate_annotations.append(
                Problem(split, ann.filename, f"{ann.where} repeats an earlier record; kept the first")
            )
            continue
        seen.add(ann.filename)
        if not 1 <= ann.class_id <= len(names):
            report.unknown_class_ids.append(
                Problem(split, ann.filename, f"{ann.where}: class id {ann.class_id} is not in 1..{len(names)}")
            )
        elif ann.filename not in on_disk:
            report.missing_files.append(Problem(split, ann.filename, f"{ann.where}: not in {folder}"))
        else:
            found.append((ann, os.path.join(folder, ann.filename)))
    for f in sorted(on_disk - seen):
        report.unannotated_images.append(Problem(split, f, f"in {folder}, no annotation record"))
    return found


def _inspect(path: str, full: bool):
    """``(width, height, mode, error)`` from the file header, or a full decode when ``full``."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            mode = im.mode
            if full:
                im.load()  # raises on truncated or damaged data, which the header does not show
        return width, height, mode, None
    except Exception as exc:  # PIL raises many types for bad files; all mean "unreadable"
        return 0, 0, "", f"{type(exc).__name__}: {exc}"


def _fit_box(box, width, height):
    """The box clipped to the image, whether it was clipped, whether nothing was left."""
    x1, y1, x2, y2 = box
    fitted = (min(max(x1, 0), width), min(max(y1, 0), height), min(max(x2, 0), width), min(max(y2, 0), height))
    degenerate = fitted[2] <= fitted[0] or fitted[3] <= fitted[1]
    return (fitted if not degenerate else (0, 0, width, height)), fitted != tuple(box), degenerate


# --------------------------------------------------------------------------- loading


def scan_stanford_cars(root, check_images: bool = False, workers: int | None = None):
    """Read the dataset at ``root`` (either layout) into ``(frame, report)``.

    The frame has one row per usable image (see :data:`COLUMNS`), sorted by
    split (train first) then filename; ``class_id`` is 0-based. Boxes are
    clipped to the image. ``check_images=True`` fully decodes every image
    (slow) instead of reading only its header. ``workers`` threads read the
    images (default: a few per CPU, as the work is mostly waiting on disk).
    Raises :class:`DatasetError` when the dataset cannot be used at all.
    """
    path = _root(root)
    layout = detect_layout(path)
    names = class_names(path, layout)
    report = ValidationReport(root=str(path), layout=layout)
    located = []
    for split in SPLITS:
        anns = _read_annotations(path, layout, split)
        report.annotations[split] = len(anns)
        locate = _locate_class_folder if layout == CLASS_FOLDER else _locate_devkit
        located += locate(_image_dir(path, layout, split), anns, names, report, split)

    workers = workers or min(16, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        headers = list(pool.map(lambda item: _inspect(item[1], check_images), located))

    rows = []
    for (ann, file), (width, height, mode, error) in zip(located, headers):
        if error:
            report.unreadable_images.append(Problem(ann.split, ann.filename, f"{file}: {error}"))
            continue
        box, clipped, degenerate = _fit_box(ann.box, width, height)
        if clipped:
            report.clipped_boxes.append(
                Problem(
                    ann.split,
                    ann.filename,
                    f"{ann.where}: box {ann.box} clipped to "
                    f"{box if not degenerate else 'nothing'} on a {width}x{height} image",
                )
            )
        if degenerate:
            report.degenerate_boxes.append(
                Problem(
                    ann.split,
                    ann.filename,
                    f"{ann.where}: box {ann.box} has no area on a {width}x{height} image; used the whole image",
                )
            )
        cid = ann.class_id - 1
        rows.append((file, ann.filename, ann.split, cid, names[cid], *box, width, height, mode, clipped, degenerate))
    rows.sort(key=lambda r: (SPLITS.index(r[2]), r[1]))

    frame = pd.DataFrame(rows, columns=COLUMNS)
    ints = ["class_id", "x1", "y1", "x2", "y2", "width", "height"]
    frame = frame.astype({**dict.fromkeys(ints, "int64"), "clipped": bool, "degenerate": bool})
    for split in SPLITS:
        report.images[split] = int((frame["split"] == split).sum())
        if not report.images[split]:
            raise DatasetError(
                f"no usable {split} images in {path}: {report.annotations[split]} annotations "
                f"read, none matched a readable image under {_image_dir(path, layout, split)}.\n"
                f"{report.summary()}"
            )
    frame.attrs["class_names"] = list(names)
    return frame, report


def load_stanford_cars(root, strict: bool = False, check_images: bool = False) -> pd.DataFrame:
    """The dataset at ``root`` as a frame (see :func:`scan_stanford_cars`).

    Logs the report's summary to the ``carclf.data`` logger and attaches the
    report as ``frame.attrs["report"]`` (the class names are in
    ``frame.attrs["class_names"]``). With ``strict=True`` any problem other
    than a clipped box raises :class:`DatasetError` listing them.
    """
    frame, report = scan_stanford_cars(root, check_images=check_images)
    log.log(logging.INFO if report.ok else logging.WARNING, "%s", report.summary())
    if strict and not report.ok:
        problems = report.problems(include_notes=False)
        shown = [f"  {kind}: {p.split} {p.file}: {p.detail}" for kind, p in problems[:20]]
        if len(problems) > 20:
            shown.append(f"  ... and {len(problems) - 20} more")
        raise DatasetError(
            f"{len(problems)} problems in the dataset at {report.root} (strict mode):\n"
            + "\n".join(shown)
            + "\nFix them, or load with strict=False to leave those rows out "
            "(they stay listed in frame.attrs['report'])."
        )
    frame.attrs["report"] = report
    return frame


def dataset_fingerprint(root) -> dict:
    """What a cached scan of ``root`` depends on: the layout, the content of its
    name and annotation files (small) and the mtime of its image folders (which
    changes when files are added or removed). Cheap: no image is opened.
    """
    path = _root(root)
    layout = detect_layout(path)
    if layout == CLASS_FOLDER:
        files = [path / "names.csv"] + [path / f"anno_{s}.csv" for s in SPLITS]
    else:
        files = [path / "devkit" / "cars_meta.mat", path / "devkit" / "cars_train_annos.mat", _test_mat(path)]
    folders = []
    for split in SPLITS:
        top = _image_dir(path, layout, split)
        folders += [top] + sorted(p for p in top.iterdir() if p.is_dir())
    stamp = {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.exists()}
    stamp.update({str(p.relative_to(path)) + "/": p.stat().st_mtime_ns for p in folders})
    return {"root": str(path), "layout": layout, "files": stamp}


def labels(frame: pd.DataFrame, num_classes: int | None = None):
    """``(ints, onehot)``: class ids as int64 ``(N,)`` and one-hot float32 ``(N, num_classes)``.

    ``num_classes`` defaults to the number of class names the frame carries in
    ``attrs["class_names"]``, so classes without images still get a column.
    """
    if num_classes is None:
        if "class_names" not in frame.attrs:
            raise ValueError("the frame carries no attrs['class_names']; pass num_classes")
        num_classes = len(frame.attrs["class_names"])
    ints = frame["class_id"].to_numpy(dtype=np.int64)
    if ints.size and (ints.min() < 0 or ints.max() >= num_classes):
        raise ValueError(f"class ids span {ints.min()}..{ints.max()}, outside 0..{num_classes - 1}")
    onehot = np.zeros((ints.size, num_classes), dtype=np.float32)
    onehot[np.arange(ints.size), ints] = 1.0
    return ints, onehot
