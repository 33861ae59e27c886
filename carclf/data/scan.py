"""Reading the dataset: annotations matched to image files, validated, as one frame."""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from carclf.data.agreement import check_names_agree
from carclf.data.annotations import class_names, read_annotations
from carclf.data.layout import (
    CLASS_FOLDER,
    COLUMNS,
    SPLITS,
    DatasetError,
    _image_dir,
    _is_image,
    _root,
    _test_mat,
    detect_layout,
    folder_name,
)
from carclf.data.report import Problem, ValidationReport

log = logging.getLogger("carclf.data")


def _locate_class_folder(folder: Path, anns: list, names: list, report: ValidationReport, split: str):
    """``(annotation, path)`` for each annotation whose image is on disk."""
    on_disk, loose = _class_folder_files(folder)
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
    _report_unannotated(folder, on_disk, loose, used, report, split)
    return found


def _class_folder_files(folder: Path):
    """``({class folder: {image file}}, [image files outside any class folder])``."""
    on_disk, loose = {}, []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("."):
                with os.scandir(entry.path) as files:
                    on_disk[entry.name] = {f.name for f in files if _is_image(f)}
            elif _is_image(entry):
                loose.append(entry.name)
    return on_disk, loose


def _report_unannotated(folder: Path, on_disk: dict, loose: list, used: set, report: ValidationReport, split: str):
    for name, files in sorted(on_disk.items()):
        for f in sorted(files):
            if (name, f) not in used:
                report.unannotated_images.append(
                    Problem(split, f"{name}/{f}", f"in {folder / name}, no row in anno_{split}.csv")
                )
    for f in sorted(loose):
        if ("", f) not in used:
            report.unannotated_images.append(Problem(split, f, f"loose in {folder}, no row in anno_{split}.csv"))


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


def scan_stanford_cars(root, check_images: bool = False, workers: int | None = None, check_names: bool = True):
    """Read the dataset at ``root`` (either layout) into ``(frame, report)``.

    The frame has one row per usable image (see :data:`COLUMNS`), sorted by
    split (train first) then filename; ``class_id`` is 0-based. Boxes are
    clipped to the image. ``check_images=True`` fully decodes every image
    (slow) instead of reading only its header (the decoded cache decodes
    every image anyway). ``workers`` threads read the images (default: a few
    per CPU, as the work is mostly waiting on disk). Raises
    :class:`DatasetError` when the dataset cannot be used at all, and, with
    ``check_names`` (the default), when the class names and the annotations
    disagree (:func:`check_names_agree`).
    """
    path = _root(root)
    layout = detect_layout(path)
    names = class_names(path, layout)
    report = ValidationReport(root=str(path), layout=layout)
    located = []
    for split in SPLITS:
        anns = read_annotations(path, layout, split)
        report.annotations[split] = len(anns)
        locate = _locate_class_folder if layout == CLASS_FOLDER else _locate_devkit
        located += locate(_image_dir(path, layout, split), anns, names, report, split)
    if check_names:
        check_names_agree(path, layout, names, report, located)

    workers = workers or min(16, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        headers = list(pool.map(lambda item: _inspect(item[1], check_images), located))

    rows = [row for item, header in zip(located, headers) if (row := _row(item, header, names, report))]
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


def _row(located, header, names, report: ValidationReport):
    """The frame row of one located image (its box clipped to the image), or None when it is unreadable."""
    (ann, file), (width, height, mode, error) = located, header
    if error:
        report.unreadable_images.append(Problem(ann.split, ann.filename, f"{file}: {error}"))
        return None
    box, clipped, degenerate = _fit_box(ann.box, width, height)
    if clipped:
        kept = box if not degenerate else "nothing"
        report.clipped_boxes.append(
            Problem(
                ann.split, ann.filename, f"{ann.where}: box {ann.box} clipped to {kept} on a {width}x{height} image"
            )
        )
    if degenerate:
        detail = f"{ann.where}: box {ann.box} has no area on a {width}x{height} image; used the whole image"
        report.degenerate_boxes.append(Problem(ann.split, ann.filename, detail))
    cid = ann.class_id - 1
    return (file, ann.filename, ann.split, cid, names[cid], *box, width, height, mode, clipped, degenerate)


def load_stanford_cars(
    root, strict: bool = False, check_images: bool = False, check_names: bool = True
) -> pd.DataFrame:
    """The dataset at ``root`` as a frame (see :func:`scan_stanford_cars`).

    Logs the report's summary to the ``carclf.data`` logger and attaches the
    report as ``frame.attrs["report"]`` (the class names are in
    ``frame.attrs["class_names"]``). With ``strict=True`` any problem other
    than a clipped box raises :class:`DatasetError` listing them.
    """
    frame, report = scan_stanford_cars(root, check_images=check_images, check_names=check_names)
    # Headers only: the decoded cache decodes every image and adds what it finds (workflow.decode_images).
    log.log(logging.INFO if report.ok else logging.WARNING, "scanned (image headers only): %s", report.summary())
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
