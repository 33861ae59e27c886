"""The class names and the annotations must agree, or nothing is read: a names file one line short shifts
every name after the gap, so images would carry the next class's name without any error."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path

from carclf.data.layout import CLASS_FOLDER, DatasetError, folder_name
from carclf.data.report import ValidationReport

__all__ = ["check_names_agree"]


def _names_file(root: Path, layout: str) -> Path:
    return root / "names.csv" if layout == CLASS_FOLDER else root / "devkit" / "cars_meta.mat"


def _where(problem) -> str:
    return problem.detail.split(":", 1)[0]  # "anno_train.csv line 7"


def check_names_agree(root: Path, layout: str, names: list, report: ValidationReport, located: list) -> None:
    """Raise :class:`DatasetError` (one line: the file, the line, the fix) when the names and the annotations
    disagree: a class id outside the names, a class folder that no name maps to, or a class whose images all
    sit in another class's folder (a name missing or out of order)."""
    source, n = _names_file(root, layout), len(names)
    shifted = _shifted_classes(names, located) if layout == CLASS_FOLDER else []
    hint = ""
    if shifted:
        cid, expected, actual, count = shifted[0]
        hint = (
            f"; the first name that disagrees is line {cid} ({expected!r}): the {count} images annotated "
            f"class {cid} are in the folder {actual!r}"
        )
    beyond = [p for p in report.unknown_class_ids if _class_id(p) > n]
    if beyond:
        raise DatasetError(
            f"{source} names {n} classes but {_where(beyond[0])} uses class id {_class_id(beyond[0])} "
            f"({len(beyond)} annotations use ids above {n}){hint}: restore the missing lines of "
            f"{source.name} (line k names class id k), or correct the ids"
        )
    if report.unknown_class_ids:
        first = report.unknown_class_ids[0]
        raise DatasetError(
            f"{root}: {_where(first)} has class id {_class_id(first)}, not in 1..{n} "
            f"({len(report.unknown_class_ids)} such annotations): class ids count from 1, line k of "
            f"{source.name} naming id k; correct the ids"
        )
    if report.unknown_folders:
        first = report.unknown_folders[0]
        raise DatasetError(
            f"{root}: the {first.split} folder {first.file!r} ({first.detail.split(' ', 1)[0]} images) matches no "
            f"line of {source.name} ({len(report.unknown_folders)} such folders){hint}: every class folder must "
            f"be a name of {source.name} ('/' written as '-'); restore its line, or move the folder out"
        )
    if shifted:
        cid, expected, actual, count = shifted[0]
        raise DatasetError(
            f"{source}: line {cid} names {expected!r} but the {count} images annotated class {cid} are in the "
            f"folder {actual!r} ({len(shifted)} classes like this): put the names in class-id order "
            f"(line k names class id k)"
        )


def _class_id(problem) -> int:
    return int(problem.detail.rsplit("class id ", 1)[1].split()[0])


def _shifted_classes(names, located) -> list:
    """``(class id, expected folder, actual folder, images)`` of each class whose images (two or more) all sit
    in one other class's folder, in id order."""
    folders = defaultdict(Counter)
    for ann, path in located:
        folders[ann.class_id][os.path.basename(os.path.dirname(path))] += 1
    shifted = []
    for cid in sorted(folders):
        (actual, count), total = folders[cid].most_common(1)[0], sum(folders[cid].values())
        expected = folder_name(names[cid - 1])
        if actual not in (expected, "") and count == total >= 2:
            shifted.append((cid, expected, actual, count))
    return shifted
