"""Where carclf keeps things, and the settings of each run profile."""

import os
from dataclasses import dataclass
from pathlib import Path


def usable_cpus():
    """The CPUs this process may run on (a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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
    def reports(self):
        """Plots, tables and executed notebooks of a run."""
        return self.root / "reports"

    @property
    def synthetic(self):
        return self.data / "synthetic"

    @property
    def augmented(self):
        return self.data / "augmented"

    def make(self):
        for folder in (self.data, self.pickles, self.models, self.logs, self.reports):
            folder.mkdir(parents=True, exist_ok=True)
        return self


#: The report's global defaults (workflow step 7): the "default" hyperparameters
#: that the search's "optimal" ones are compared against.
DEFAULT_HYPERPARAMS = {
    "optimizer_type": "Adam",
    "learning_rate": 1e-4,
    "beta_1": 0.9,
    "beta_2": 0.999,
    "decay": 1e-6,
    "weight_decay": None,
    "dropout": 0.5,
    "fc_layers": [512],
    "x_trainable": "all",
}

#: Everything a run profile decides, in one place. ``demo`` runs the whole
#: workflow on the synthetic set on a CPU in minutes; ``full`` is the report's run.
PROFILES = {
    "demo": {
        "dataset": "synthetic",
        "synthetic": {"n_classes": 10, "per_class_train": 16, "per_class_test": 8, "seed": 0},
        "image_size": (80, 80),  # InceptionV3 needs 75, AlexNet 67
        "crop": "box",
        "margin": 0.08,
        "augmentation": "offline",
        "n_variants": 1,
        "cutmix": False,
        "mixup": False,
        "batch_size": 16,
        "epochs": 1,
        "accum_steps": None,
        "models": [
            "model1",
            "alexnet",
            "vgg16",
            "resnet50",
            "densenet121",
            "imagenet",
            "efficientnetb0",
            "inceptionv3",
        ],
        # On a CPU the six large bases train frozen (the report's x_trainable="none"): their
        # training graphs take most of a demo's time to build. model1 and AlexNet train whole.
        "hyperparams": {**DEFAULT_HYPERPARAMS, "learning_rate": 1e-3, "weights": None, "x_trainable": "none"},
        "hyperparams_by_model": {"model1": {"x_trainable": "all"}, "alexnet": {"x_trainable": "all"}},
        "search": {
            "backend": "skopt",
            "model": "model1",
            "n_trials": 4,
            "epochs": 2,
            "n_initial_points": 2,
            "subsample": None,
            "input_size": None,
        },
        "seed": 0,
    },
    "full": {
        "dataset": "data/stanford_cars",
        "image_size": (224, 224),
        "crop": "box",
        "margin": 0.08,
        "augmentation": "offline",
        "n_variants": 1,
        "cutmix": False,
        "mixup": False,
        "batch_size": 32,
        "epochs": 22,
        "accum_steps": None,
        "models": [
            "model1",
            "alexnet",
            "vgg16",
            "resnet50",
            "densenet121",
            "imagenet",
            "efficientnetb0",
            "inceptionv3",
        ],
        "hyperparams": {**DEFAULT_HYPERPARAMS, "weights": "imagenet"},
        "hyperparams_by_model": {},
        "search": {
            "backend": "skopt",
            "model": "resnet50",
            "n_trials": 20,
            "epochs": 5,
            "n_initial_points": 10,
            "subsample": 0.5,
            "input_size": (160, 160),
        },
        "seed": 0,
    },
}
