"""Training (the report's "Model Pipeline", steps 11 to 13): docs/training.md.

``optimizers`` (the report's optimizer choice and legacy decay), ``callbacks`` (the report's callbacks and
carclf's), ``resume`` (the per-epoch resume state), ``writer`` (its background writer), ``saving`` (model
files), ``result`` (what a run returns) and ``pipeline`` (``run_model_pipeline`` in named steps).
"""

from carclf.train.callbacks import (
    BestModelCheckpoint,
    EarlyStopping,
    EMAWeights,
    NonFiniteLossError,
    ReduceLROnPlateau,
    StopOnNonFiniteLoss,
    TrainingCallbacks,
    create_callbacks,
    tensorboard_available,
)
from carclf.train.optimizers import (
    DEFAULT_OPTIMIZER,
    OPTIMIZER_KEYS,
    OPTIMIZERS,
    PlateauInverseTimeDecay,
    UnknownOptimizerError,
    current_lr,
    make_optimizer,
    optimizer_settings,
    warmup_cosine,
)
from carclf.train.pipeline import filter_hyperparams, make_loss, plan_phases, run_model_pipeline
from carclf.train.result import TrainResult
from carclf.train.resume import TRAIN_FORMAT, ResumableState
from carclf.train.saving import load_model, save_model_atomic

__all__ = [
    "BestModelCheckpoint",
    "DEFAULT_OPTIMIZER",
    "EMAWeights",
    "EarlyStopping",
    "NonFiniteLossError",
    "OPTIMIZERS",
    "OPTIMIZER_KEYS",
    "PlateauInverseTimeDecay",
    "ReduceLROnPlateau",
    "ResumableState",
    "StopOnNonFiniteLoss",
    "TRAIN_FORMAT",
    "TrainResult",
    "TrainingCallbacks",
    "UnknownOptimizerError",
    "create_callbacks",
    "current_lr",
    "filter_hyperparams",
    "load_model",
    "make_loss",
    "make_optimizer",
    "optimizer_settings",
    "plan_phases",
    "run_model_pipeline",
    "save_model_atomic",
    "tensorboard_available",
    "warmup_cosine",
]
