"""Where carclf keeps things, and the settings of each run profile."""

import os
from dataclasses import dataclass
from pathlib import Path

#: The repository root: the folder that holds the ``carclf`` package.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Paths:
    """The design card's folders under one root.

    ``CARCLF_HOME`` overrides the root, so a notebook started from
    ``notebooks/`` and a test working in a temporary folder agree on where
    results live.
    """

    root: Path

    @classmethod
    def default(cls, root=None):
        root = root or os.environ.get("CARCLF_HOME") or PROJECT_ROOT
        return cls(Path(root).resolve())

    @property
    def data(self):
        return self.root / "data"

    @property
    def pickles(self):
        return self.root / "pickles"

    @property
    def models(self):
        return self.root / "models"

    @property
    def logs(self):
        return self.root / "logs"

    @property
    def synthetic(self):
        return self.data / "synthetic"

    @property
    def augmented(self):
        return self.data / "augmented"

    def make(self):
        for folder in (self.data, self.pickles, self.models, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        return self


#: Settings that differ between the CPU demo and the report's full run.
PROFILES = {
    "demo": {
        "dataset": "synthetic",
        "synthetic": {"n_classes": 10, "per_class_train": 24, "per_class_test": 12, "seed": 0},
        "image_size": (80, 80),  # InceptionV3 needs 75, AlexNet 67
        "crop": "box",
        "margin": 0.08,
    },
    "full": {
        "dataset": "data/stanford_cars",
        "image_size": (224, 224),
        "crop": "box",
        "margin": 0.08,
    },
}
