"""The two profiles: "full" is the report's run; "demo" is derived from it, so nothing is written twice."""

from __future__ import annotations

from types import MappingProxyType

from carclf.settings.checks import SettingsError
from carclf.settings.groups import Hyperparams, RunSettings, SearchSettings, TrainSettings
from carclf.settings.names import override

FULL = RunSettings(
    profile="full",
    train=TrainSettings(verbose=0),  # the notebook shows one line per run, not Keras's per-batch bar
    hyperparams=Hyperparams(weights="imagenet"),
    search=SearchSettings(model="resnet50", n_trials=20, epochs=5, subsample=0.5, input_size=(160, 160)),
).override(recipe="modern")  # the report's recipe stays: profile("full", recipe="report")

DEMO = FULL.override(
    profile="demo",
    recipe="report",
    dataset="synthetic",
    image_size=(80, 80),  # InceptionV3 needs 75, AlexNet 67
    batch_size=16,
    epochs=1,
    # On a CPU the six large bases train frozen (the report's x_trainable="none"): their training graphs
    # take most of a demo's time to build. model1 and AlexNet train whole.
    hyperparams_by_model={"model1": {"x_trainable": "all"}, "alexnet": {"x_trainable": "all"}},
    **{
        "hyperparams.learning_rate": 1e-3,
        "hyperparams.weights": None,
        "hyperparams.x_trainable": "none",
        # Two CPU cores: the report's practice, one search (model1's) reused for every model; the full
        # profile searches each model for itself.
        "search.per_model": False,
        "search.model": "model1",
        "search.n_trials": 4,
        "search.epochs": 2,
        "search.subsample": None,
        "search.input_size": None,
        "search.skopt.n_initial_points": 2,
    },
)

PROFILES = MappingProxyType({"demo": DEMO, "full": FULL})


def profile(name: str, **changes) -> RunSettings:
    """The settings of profile ``name`` ("demo" or "full") with ``changes`` (see :func:`override`)."""
    if name not in PROFILES:
        raise SettingsError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    return override(PROFILES[name], **changes)
