"""The fine-tuning recipes: named bundles of settings (docs/recipes.md).

A recipe sets its *parts* (what makes it that recipe: the head, the phases, the optimizer, the schedule,
label smoothing, the weights' average, the augmentation, early stopping, test-time augmentation) and its
*defaults* (starting values a run or a search may change: the learning rate, weight decay, dropout,
epochs). ``recipe="report"`` is the report's behaviour exactly; ``recipe="modern"`` is the practice of timm,
fastai's ``fine_tune`` and the keras.io fine-tuning guide. A settings object whose parts match no recipe is
``"custom"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["RECIPES", "Recipe", "recipe_of", "recipe_rows"]


@dataclass(frozen=True)
class Recipe:
    parts: dict = field(default_factory=dict)  # dotted setting -> value: what makes the recipe
    defaults: dict = field(default_factory=dict)  # dotted setting -> value: where it starts

    @property
    def settings(self) -> dict:
        return {**self.defaults, **self.parts}


_REPORT = Recipe(
    parts={
        "hyperparams.head": "report",
        "hyperparams.gates": True,
        "hyperparams.optimizer_type": "Adam",
        "train.two_phase": False,
        "train.schedule": "report",
        "train.label_smoothing": 0.0,
        "train.ema": False,
        "train.callbacks.early_stopping.monitor": "val_loss",
        "train.callbacks.reduce_lr.monitor": "val_loss",
        "augment.augmentation": "offline",
        "augment.pipeline": "report",
        "evaluation.tta": False,
    },
    defaults={
        "hyperparams.learning_rate": 1e-4,
        "hyperparams.decay": 1e-6,
        "hyperparams.weight_decay": None,
        "hyperparams.dropout": 0.5,
        "hyperparams.fc_layers": (512,),
        "hyperparams.x_trainable": "all",
        "train.epochs": 22,
    },
)

_MODERN = Recipe(
    parts={
        "hyperparams.head": "gap",
        "hyperparams.gates": False,
        "hyperparams.optimizer_type": "AdamW",
        "train.two_phase": True,
        "train.schedule": "warmup_cosine",
        "train.label_smoothing": 0.1,
        "train.ema": True,
        "train.callbacks.early_stopping": None,  # the cosine schedule ends the run, not a plateau
        "train.callbacks.reduce_lr": None,
        "augment.augmentation": "online",
        "augment.pipeline": "modern",
        "evaluation.tta": True,
    },
    defaults={
        "hyperparams.learning_rate": 1e-3,  # the head's; the fine-tuning phase runs at a tenth of it
        "hyperparams.decay": 0.0,
        "hyperparams.weight_decay": 0.05,  # decoupled: lr * 0.05 per step, which does shrink the weights
        "hyperparams.dropout": 0.2,
        "hyperparams.fc_layers": (),
        "hyperparams.x_trainable": "all",
        "train.head_epochs": 3,
        "train.finetune_lr_scale": 0.1,
        "train.warmup": 0.1,
        "train.ema_momentum": 0.99,  # Keras's default; docs/recipes.md says why not 0.999
        "train.epochs": 30,  # the report's "Next Steps": 30-35 epochs
    },
)

RECIPES = MappingProxyType({"report": _REPORT, "modern": _MODERN})


def _value(settings, dotted):
    obj = settings
    for part in dotted.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part)
    return obj


def recipe_of(settings) -> str:
    """The recipe whose parts ``settings`` (a RunSettings) has, or ``"custom"``."""
    for name, recipe in RECIPES.items():
        if all(_value(settings, k) == v for k, v in recipe.parts.items()):
            return name
    return "custom"


def recipe_rows(settings=None) -> list[dict]:
    """The two recipes side by side, one row per setting either of them sets: its value under ``report``,
    under ``modern`` and, given ``settings``, in this run (what the notebook shows before training)."""
    rows = []
    names = dict.fromkeys([*_MODERN.parts, *_REPORT.parts, *_MODERN.defaults, *_REPORT.defaults])
    for dotted in names:
        row = {"setting": dotted, "part": dotted in _MODERN.parts or dotted in _REPORT.parts}
        for name, recipe in RECIPES.items():
            row[name] = recipe.settings.get(dotted, "(as the profile)")
        if settings is not None:
            row["this run"] = _value(settings, dotted)
        rows.append(row)
    return rows
