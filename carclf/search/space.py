"""The search space of the report's step 10, declared once; both backends are built from it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from carclf.cache import native

__all__ = [
    "AUGMENT_KNOBS",
    "OPTIMIZER_PARAMS",
    "REPORT_SPACE",
    "SEARCH_SPACE",
    "TRAIN_KNOBS",
    "applied",
    "applies",
    "constants",
    "in_space",
    "is_choices",
    "search_space",
    "split_params",
    "widen",
]


#: The search space, one entry per hyperparameter: ``(low, high, prior)`` with prior ``"uniform"`` or
#: ``"log-uniform"`` (two ints and ``"uniform"``: an integer range), or a list of choices. The report's
#: ranges (:data:`REPORT_SPACE`), except weight decay: Keras's decay is decoupled, ``lr * weight_decay``
#: of each weight per step, so the report's 1e-6 to 1e-4 moved the weights by about 1e-8 a step. From 1e-3
#: to 0.5 it shrinks them by 0.01% to 50% over a thousand steps at 1e-3 (docs/search.md). The last four
#: are the modern recipe's knobs; :func:`search_space` keeps only what the run's settings read.
SEARCH_SPACE: dict[str, Any] = {
    "learning_rate": (1e-6, 1e-3, "log-uniform"),
    "weight_decay": (1e-3, 0.5, "log-uniform"),
    "dropout": (0.1, 0.5, "uniform"),
    "beta_1": (0.85, 0.95, "uniform"),
    "beta_2": (0.99, 0.9999, "uniform"),
    "decay": (1e-7, 1e-5, "log-uniform"),
    "momentum": (0.8, 0.99, "uniform"),
    "rho": (0.8, 0.99, "uniform"),
    "optimizer_type": ["Adam", "SGD", "RMSprop", "Adagrad"],
    "label_smoothing": (0.0, 0.3, "uniform"),
    "warmup": (0.0, 0.3, "uniform"),
    "finetune_lr_scale": (0.01, 1.0, "log-uniform"),
    "crop_scale": (0.08, 1.0, "uniform"),
}

#: Searched values that are training settings (:class:`carclf.settings.TrainSettings`) or augmentation
#: settings (:class:`carclf.settings.AugmentSettings`), not hyperparameters of the model's dict.
TRAIN_KNOBS = ("label_smoothing", "warmup", "finetune_lr_scale")
AUGMENT_KNOBS = ("crop_scale",)

#: The report's "Hyper-parameter Search" as it wrote it (``search.ranges="report"``): learning rate 1e-3
#: to 1e-6, weight decay 1e-4 to 1e-6, dropout 0.1 to 0.5, beta_1 and beta_2 around 0.9 and 0.999, decay
#: "a small value like 1e-6", momentum and rho around 0.9.
REPORT_SPACE: dict[str, Any] = {
    **{k: v for k, v in SEARCH_SPACE.items() if k not in (*TRAIN_KNOBS, *AUGMENT_KNOBS)},
    "weight_decay": (1e-6, 1e-4, "log-uniform"),
}

#: Hyperparameters that only one optimizer reads (the report: beta_1/beta_2
#: for Adam, momentum for SGD, rho for RMSprop); the others apply to all.
#: A trial leaves out those its optimizer does not read.
OPTIMIZER_PARAMS: dict[str, tuple[str, ...]] = {
    "beta_1": ("Adam", "AdamW"),
    "beta_2": ("Adam", "AdamW"),
    "momentum": ("SGD",),
    "rho": ("RMSprop",),
}


_PRIORS = ("uniform", "log-uniform")


def is_choices(spec) -> bool:
    return isinstance(spec, (list, tuple)) and len(spec) > 0 and all(isinstance(v, str) for v in spec)


def check_space(space: Mapping) -> dict:
    """A validated copy of ``space``: ranges as ``(low, high, prior)`` tuples, choices as lists."""
    if not isinstance(space, Mapping) or not space:
        raise ValueError("the search space must be a non-empty dict of name -> (low, high, prior) or [choices]")
    out: dict[str, Any] = {}
    for name, spec in space.items():
        if is_choices(spec):
            out[name] = list(spec)
            continue
        try:
            low, high, prior = spec
        except (TypeError, ValueError):
            raise ValueError(
                f"search space entry {name!r} must be (low, high, prior) or a list of choices, got {spec!r}"
            ) from None
        if prior not in _PRIORS:
            raise ValueError(f"search space entry {name!r}: prior must be one of {_PRIORS}, got {prior!r}")
        if isinstance(low, bool) or isinstance(high, bool) or not all(isinstance(v, (int, float)) for v in (low, high)):
            raise ValueError(f"search space entry {name!r}: bounds must be numbers, got {low!r}, {high!r}")
        if not low < high:
            raise ValueError(f"search space entry {name!r}: low must be below high, got {low!r}, {high!r}: swap them")
        if prior == "log-uniform" and low <= 0:
            raise ValueError(f"search space entry {name!r}: a log-uniform range needs low > 0, got {low!r}")
        out[name] = (low, high, prior)
    if not any(not is_choices(s) or len(s) > 1 for s in out.values()):
        raise ValueError("the search space has nothing to search: every entry is a single choice")
    return out


def search_space(
    adam_only: bool = True,
    space: Mapping | None = None,
    *,
    optimizer: str = "Adam",
    schedule: str = "report",
    two_phase: bool = False,
    label_smoothing: bool = False,
    crop: bool = False,
) -> dict:
    """The search space: :data:`SEARCH_SPACE` (or ``space``), checked, less what the run cannot read.

    ``adam_only=True`` (the report's final choice) restricts ``optimizer_type`` to Adam (AdamW when the
    run's ``optimizer`` is AdamW, as under the modern recipe) and drops the hyperparameters only other
    optimizers read (momentum, rho). The legacy ``decay`` acts under the report's ``schedule`` only (a
    warmup and cosine schedule sets the rate every step), ``warmup`` under that schedule only; the
    fine-tuning rate's share (``finetune_lr_scale``) with ``two_phase``; ``label_smoothing`` where the run
    smooths; ``crop_scale`` where it crops (the modern augmentation). A single choice is a constant.
    """
    space = check_space(SEARCH_SPACE if space is None else space)
    reads = {
        "decay": schedule == "report",
        "warmup": schedule == "warmup_cosine",
        "finetune_lr_scale": two_phase,
        "label_smoothing": label_smoothing,
        "crop_scale": crop,
    }
    space = {name: spec for name, spec in space.items() if reads.get(name, True)}
    if adam_only:
        if "optimizer_type" in space and "Adam" not in space["optimizer_type"]:
            raise ValueError(
                f"adam_only=True but the space's optimizer_type choices {space['optimizer_type']} have no Adam"
            )
        adam = "AdamW" if optimizer == "AdamW" else "Adam"
        space = {name: spec for name, spec in space.items() if applies(name, adam)}
        space["optimizer_type"] = [adam]
    return check_space(space)


def widen(space: dict, defaults: Mapping) -> tuple[dict, dict]:
    """``space`` widened to hold ``defaults`` (so the defaults can be trial one), and what was widened.

    A range is stretched to the default; a log-uniform range whose default is 0 (weight decay off) becomes
    uniform from 0; a choice list gains the default. Returns ``(space, {name: (old, new)})``.
    """
    out, changed = {}, {}
    for name, spec in space.items():
        value = defaults.get(name)
        new = spec
        if value is None:
            pass
        elif is_choices(spec):
            if value not in spec:
                new = [*spec, value]
        else:
            low, high, prior = spec
            if prior == "log-uniform" and value <= 0:
                new = (0.0, float(max(high, value)), "uniform")
            elif not low <= value <= high:
                new = (min(low, value), max(high, value), prior)
        out[name] = new
        if new != spec:
            changed[name] = (spec, new)
    return out, changed


def split_params(params: Mapping) -> tuple[dict, dict, dict]:
    """A trial's values as ``(hyperparams, train settings, augment settings)`` changes."""
    train = {k: v for k, v in params.items() if k in TRAIN_KNOBS}
    augment = {k: v for k, v in params.items() if k in AUGMENT_KNOBS}
    hyper = {k: v for k, v in params.items() if k not in train and k not in augment}
    return hyper, train, augment


def applies(name: str, optimizer_type: str | None) -> bool:
    owners = OPTIMIZER_PARAMS.get(name)
    return owners is None or optimizer_type is None or optimizer_type in owners


def constants(space: dict) -> dict:
    return {name: spec[0] for name, spec in space.items() if is_choices(spec) and len(spec) == 1}


def applied(raw: Mapping, space: dict) -> dict:
    """The hyperparameters a trial trains with: its values plus the constants, less what its optimizer ignores."""
    values = {**constants(space), **dict(raw)}
    kind = values.get("optimizer_type")
    return {name: native(values[name]) for name in space if name in values and applies(name, kind)}


def in_space(params: Mapping, space: dict) -> bool:
    for name, value in params.items():
        spec = space.get(name)
        if spec is None:
            return False
        if is_choices(spec):
            if value not in spec:
                return False
        elif not spec[0] <= value <= spec[1]:
            return False
    return True
