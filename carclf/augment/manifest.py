"""The offline augmented set as it is stored: its files, listed with their sha256 by ``manifest.csv``."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from carclf.cache import StageCache, file_sha256
from carclf.decoded import UndecodableImagesError, build_decoded_cache
from carclf.settings import DecodeSettings
from carclf.splits import DecodedSplit

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("carclf.augment")

__all__ = ["AugmentedSet", "damaged_files", "manifest_bytes", "read_manifest"]

MANIFEST_COLUMNS = ["file", "source", "row", "variant", "class_id", "sha256"]


@dataclass
class AugmentedSet:
    """The offline augmented set: files in ``folder`` listed by ``manifest``.

    ``manifest`` columns: ``file`` (relative to ``folder``), ``source`` (the
    original image), ``row`` (its row in the source split), ``variant``,
    ``class_id``, ``sha256`` (of the file as written) and ``path`` (absolute).
    ``written``: files written by the call that returned this (0 when the set
    was only opened).
    """

    folder: Path
    key: str
    manifest: pd.DataFrame = field(repr=False)
    image_size: tuple
    num_classes: int
    n_variants: int
    seed: int
    loaded: bool
    written: int = 0
    cache: StageCache | None = field(default=None, repr=False, compare=False)
    #: Writes the set's missing files again and returns the set (what built it); None for a set only read.
    rebuild: Callable[[], AugmentedSet] | None = field(default=None, repr=False, compare=False)

    def __len__(self):
        return len(self.manifest)

    def frame(self) -> pd.DataFrame:
        """The manifest as a ``build_decoded_cache`` frame (whole images, box = the full image)."""
        import pandas as pd

        height, width = self.image_size
        m = self.manifest
        return pd.DataFrame(
            {
                "path": m["path"].astype(str),
                "split": "train",
                "class_id": m["class_id"].astype("int64"),
                "x1": 0,
                "y1": 0,
                "x2": width,
                "y2": height,
                "width": width,
                "height": height,
                "sha256": m["sha256"].astype(str),
            }
        )

    def to_split(self, cache: StageCache | None = None, workers=None, progress=True) -> DecodedSplit:
        """The variants decoded into a memmap (the decoded cache's machinery, stage ``decoded``), in manifest order.

        ``cache`` defaults to the one the set was built with. Each file must match its sha256; a damaged one is
        logged, removed and written again (the set's other files are kept), then decoding resumes.
        """
        cache = cache or self.cache
        if cache is None:
            raise ValueError("to_split needs a StageCache to hold the decoded variants")
        whole = DecodeSettings(image_size=self.image_size, crop="full", margin=0.0)
        try:
            decoded = build_decoded_cache(self.frame(), cache, whole, workers=workers, progress=progress)["train"]
        except UndecodableImagesError as exc:
            if self.rebuild is None:
                raise
            for problem in exc.problems:
                log.warning("augmented image %s; writing it again", problem["detail"])
                Path(problem["path"]).unlink(missing_ok=True)
            return self.rebuild().to_split(cache, workers, progress)
        return DecodedSplit(decoded.images, decoded.class_ids, decoded.paths, "augmented", self.num_classes)


def read_manifest(folder) -> pd.DataFrame:
    """``folder/manifest.csv`` with an absolute ``path`` column added."""
    import pandas as pd

    folder = Path(folder)
    manifest = pd.read_csv(folder / "manifest.csv", dtype={"file": str, "source": str, "sha256": str})
    manifest["path"] = [str(folder / f) for f in manifest["file"]]
    return manifest


def manifest_bytes(records) -> bytes:
    import pandas as pd

    text = io.StringIO()
    pd.DataFrame(records, columns=MANIFEST_COLUMNS).to_csv(text, index=False)
    return text.getvalue().encode("utf-8")


def damaged_files(folder: Path, manifest) -> list[str]:
    """The files of ``manifest`` under ``folder`` that are missing or no longer match their sha256."""
    damaged = []
    for name, digest in zip(manifest["file"], manifest["sha256"]):
        path = folder / name
        try:
            if file_sha256(path) != digest:
                damaged.append(name)
        except OSError:
            damaged.append(name)
    return damaged
