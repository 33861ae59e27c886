"""What a training run returns, and what a rerun loads from the stage cache instead of training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from carclf.paths import Paths
from carclf.train.saving import load_model, load_weights

__all__ = ["TrainResult"]


@dataclass
class TrainResult:
    """One finished training run.

    ``history``: ``{key: [value per epoch]}`` over all epochs run (loss, the report's metrics, their
    ``val_`` twins, ``learning_rate``, and ``phase`` for a two-phase run); ``validation``: what selected the
    epoch, ``"split"`` (a validation split of the training set) or ``"test"`` (the report's protocol);
    ``kept_epoch``: the 1-based epoch whose weights the model keeps, ``val_metrics`` its validation figures;
    ``test_metrics``: the final model on the test generator, read once after training
    (``test_probabilities_path``: its predictions); ``wall_min`` / ``cpu_min``: the training's minutes,
    summed over resumed sessions;
    ``policy`` / ``jit_compile``: the dtype policy and XLA setting used; ``hyperparams``: the builder's
    hyperparameters; ``optimizer``: the resolved optimizer settings; ``resumed_from_epoch``: the 0-based
    epoch a resumed training restarted at (``None`` if it ran in one go); ``loaded``: read from the stage
    cache instead of trained.
    """

    model_name: str
    key: str
    history: dict
    epochs_run: int
    stopped_early: bool
    validation: str
    kept_epoch: int | None
    val_metrics: dict
    test_metrics: dict
    wall_min: float
    cpu_min: float
    policy: str
    jit_compile: bool
    hyperparams: dict
    optimizer: dict
    model_path: Path
    best_model_path: Path | None
    summary_path: Path
    history_path: Path
    test_probabilities_path: Path | None
    tensorboard_dir: Path | None
    resumed_from_epoch: int | None
    loaded: bool

    @property
    def plot_path(self) -> Path:
        """The training curves beside the run (``history.png``, drawn by ``carclf.report.plot_history``)."""
        return self.model_path.with_name("history.png")

    def load_model(self, compile: bool = True, best: bool = False):
        """The final model, read back from disk; with ``best=True``, holding the best checkpoint's weights
        (the checkpoint keeps weights only, so the run holds one model file)."""
        model = load_model(self.model_path, compile=compile)
        if best:
            if self.best_model_path is None:
                raise FileNotFoundError(f"{self.model_name}: this run kept no checkpoint (checkpoint=None)")
            load_weights(model, self.best_model_path)
        return model

    @classmethod
    def from_value(cls, value: dict, key: str, loaded: bool, paths: Paths) -> TrainResult:
        """The result from its stage-cache value (file names there are relative to ``paths.models``)."""

        def where(rel):
            return None if rel is None else paths.models / rel

        files = value["files"]
        return cls(
            model_name=value["model_name"],
            key=key,
            history=value["history"],
            epochs_run=value["epochs_run"],
            stopped_early=value["stopped_early"],
            validation=value["validation"],
            kept_epoch=value["kept_epoch"],
            val_metrics=value["val_metrics"],
            test_metrics=value["test_metrics"],
            wall_min=value["wall_min"],
            cpu_min=value["cpu_min"],
            policy=value["policy"],
            jit_compile=value["jit_compile"],
            hyperparams=value["hyperparams"],
            optimizer=value["optimizer"],
            model_path=where(files["model"]),
            best_model_path=where(files["best"]),
            summary_path=where(files["summary"]),
            history_path=where(files["history"]),
            test_probabilities_path=where(files["test_probabilities"]),
            tensorboard_dir=None if value["tensorboard"] is None else paths.root / value["tensorboard"],
            resumed_from_epoch=value["resumed_from_epoch"],
            loaded=loaded,
        )
