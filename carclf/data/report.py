"""What is wrong with a dataset, problem by problem: the validation report."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import NamedTuple

import pandas as pd

from carclf.data.layout import SPLITS


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
    decoder_warnings: list = field(default_factory=list)
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

    def summary(self, listing=None) -> str:
        """A short multi-line account: where, what was kept, and each count; ``listing`` is where the list
        of problems is (``reports/validation.csv``), for the status line."""
        kept = ", ".join(f"{s} {self.images.get(s, 0)}/{self.annotations.get(s, 0)}" for s in SPLITS)
        lines = [f"Stanford Cars at {self.root} ({self.layout} layout)", f"  images kept / annotated: {kept}"]
        lines += [f"  {kind.replace('_', ' ')}: {n}" for kind, n in self.counts().items()]
        where = f"listed file by file in {listing}" if listing else "listed by report.to_frame()"
        lines.append("  status: " + ("ok" if self.ok else f"problems found, {where}"))
        if self.problems() and listing and self.ok:
            lines[-1] += f" (the clipped boxes are listed in {listing})"
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        """One row per problem: ``problem``, ``split``, ``file``, ``detail``."""
        rows = [(kind, *p) for kind, p in self.problems()]
        return pd.DataFrame(rows, columns=["problem", "split", "file", "detail"])

    def add_decode_problems(self, problems) -> int:
        """Add what decoding found (``carclf.decoded.decode_problems``): images that could not be decoded whole
        (left out of training) and the decoder's warnings. Returns how many were new (a second call adds none)."""
        known = set(self.problems())
        added = 0
        for p in problems:
            detail = p["detail"] + ("; left out of training" if p["kind"] == "unreadable_images" else "")
            problem = Problem(p["split"], p["path"].replace("\\", "/").rsplit("/", 1)[-1], f"decoding {detail}")
            if (p["kind"], problem) in known:
                continue
            getattr(self, p["kind"]).append(problem)
            added += 1
            if p["kind"] == "unreadable_images" and p["split"] in self.images:
                self.images[p["split"]] -= 1
        return added
