"""The notebook's stages as calls: each loads its cached result or computes it.

A :class:`Workspace` ties one run together: the folders, the stage cache, the
stage timer and the profile's settings. The notebook and ``python -m carclf``
call the same functions, so a stage re-run from either place is served from
the same cache.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from carclf.cache import StageCache, config_hash
from carclf.config import PROFILES, Paths
from carclf.runlog import StageTimer, setup_logging

log = logging.getLogger("carclf.workflow")


@dataclass
class Workspace:
    """Paths, cache, timer and settings of one run profile."""

    profile: str
    settings: dict
    paths: Paths
    cache: StageCache
    timer: StageTimer
    results: dict = field(default_factory=dict)

    @classmethod
    def open(cls, profile="demo", root=None, **overrides):
        """Set up the folders and logging for ``profile`` ("demo" or "full").

        ``overrides`` replace the profile's settings (``dataset=PATH``,
        ``image_size=(128, 128)``...).
        """
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}: choose one of {sorted(PROFILES)}")
        paths = Paths.default(root).make()
        setup_logging(paths.logs)
        settings = {**PROFILES[profile], **overrides}
        log.info("profile %s, results under %s", profile, paths.root)
        return cls(profile, settings, paths, StageCache(paths.pickles), StageTimer(paths.logs / "timings.csv"))


def dataset_root(ws):
    """The dataset folder of the profile; the synthetic set is made first if the profile asks for it."""
    dataset = ws.settings["dataset"]
    if dataset != "synthetic":
        root = Path(dataset)
        return root if root.is_absolute() else ws.paths.root / root
    from carclf.synthetic import make_synthetic

    options = ws.settings["synthetic"]
    # One folder per set of options: make_synthetic refuses to mix two sets in one folder.
    root = ws.paths.data / "synthetic" / config_hash(options, length=8)
    with ws.timer.stage("synthetic dataset"):
        make_synthetic(root, **options)
    return root


def load_dataset(ws):
    """The report's step 2: names and annotations, validated (a cached stage)."""
    from carclf.data import dataset_fingerprint, load_stanford_cars

    root = dataset_root(ws)
    with ws.timer.stage("load dataset"):
        result = ws.cache.run("dataset", dataset_fingerprint(root), lambda: load_stanford_cars(root))
    ws.results["dataset"] = result
    return result


def decode_images(ws, dataset=None):
    """Crop, resize and store every image once as uint8 memmaps (a cached, resumable stage)."""
    from carclf.decoded import build_decoded_cache

    dataset = dataset or ws.results.get("dataset") or load_dataset(ws)
    with ws.timer.stage("decode images"):
        decoded = build_decoded_cache(
            dataset.value,
            ws.cache,
            image_size=tuple(ws.settings["image_size"]),
            crop=ws.settings["crop"],
            margin=ws.settings["margin"],
            deps=[dataset],
        )
    ws.results["decoded"] = decoded
    return decoded


def summary(ws):
    """A short text on what the workspace holds: data, validation, decoded arrays, cache, timings."""
    lines = [f"carclf workspace: profile {ws.profile}, results under {ws.paths.root}"]
    if "dataset" in ws.results:
        frame = ws.results["dataset"].value
        names = frame.attrs["class_names"]
        counts = frame["split"].value_counts()
        lines.append(f"dataset: {len(names)} classes, {counts.get('train', 0)} train and "
                     f"{counts.get('test', 0)} test images ({ws.results['dataset'].path.parent})")
        report = frame.attrs.get("report")
        if report is not None:
            lines.append(report.summary())
    for split, part in ws.results.get("decoded", {}).items():
        lines.append(f"decoded {split}: {part.images.shape} {part.images.dtype} in {Path(part.images.filename).parent}")
    loaded = sum(1 for *_, how in ws.cache.events if how == "loaded")
    lines.append(f"stage cache: {loaded} of {len(ws.cache.events)} stages served from {ws.cache.root}")
    table = ws.timer.table()
    if not table.empty:
        lines.append("execution time (minutes; the last row in hours):")
        lines.append(table.round(3).to_string())
    return "\n".join(lines)
