"""The report's search space (step 10), declared once; both backends are built from it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from carclf.cache import native

__all__ = [
    "OPTIMIZER_PARAMS",
    "SEARCH_SPACE",
    "applied",
    "applies",
    "constants",
    "in_space",
    "is_choices",
    "search_space",
]


#: The report's "Hyper-parameter Search", one entry per hyperparameter:
#: ``(low, high, prior)`` with prior ``"uniform"`` or ``"log-uniform"`` (two
#: ints and ``"uniform"``: an integer range), or a list of choices. Ranges
#: follow the report's typical values: learning rate 1e-3 to 1e-6, weight
#: decay 1e-4 to 1e-6, dropout 0.1 to 0.5, beta_1 and beta_2 around 0.9 and
#: 0.999, decay "a small value like 1e-6", momentum and rho around 0.9.
SEARCH_SPACE: dict[str, Any] = {
    "learning_rate": (1e-6, 1e-3, "log-uniform"),
    "weight_decay": (1e-6, 1e-4, "log-uniform"),
    "dropout": (0.1, 0.5, "uniform"),
    "beta_1": (0.85, 0.95, "uniform"),
    "beta_2": (0.99, 0.9999, "uniform"),
    "decay": (1e-7, 1e-5, "log-uniform"),
    "momentum": (0.8, 0.99, "uniform"),
    "rho": (0.8, 0.99, "uniform"),
    "optimizer_type": ["Adam", "SGD", "RMSprop", "Adagrad"],
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
            raise ValueError(f"search space entry {name!r}: low must be below high, got {low!r}, {high!r}")
        if prior == "log-uniform" and low <= 0:
            raise ValueError(f"search space entry {name!r}: a log-uniform range needs low > 0, got {low!r}")
        out[name] = (low, high, prior)
    if not any(not is_choices(s) or len(s) > 1 for s in out.values()):
        raise ValueError("the search space has nothing to search: every entry is a single choice")
    return out


def search_space(
    adam_only: bool = True, space: Mapping | None = None, *, optimizer: str = "Adam", schedule: str = "report"
) -> dict:
    """The search space: :data:`SEARCH_SPACE` (or ``space``), checked.

    ``adam_only=True`` (the report's final choice) restricts ``optimizer_type`` to Adam (AdamW when the
    run's ``optimizer`` is AdamW, as under the modern recipe) and drops the hyperparameters only other
    optimizers read (momentum, rho). Under the run's ``schedule="warmup_cosine"`` the report's ``decay``
    cannot act (the schedule sets the rate every step) and is left out. A single choice is a constant, not
    a searched dimension.
    """
    space = check_space(SEARCH_SPACE if space is None else space)
    if schedule == "warmup_cosine":
        space = {name: spec for name, spec in space.items() if name != "decay"}
    if adam_only:
        if "optimizer_type" in space and "Adam" not in space["optimizer_type"]:
            raise ValueError(
                f"adam_only=True but the space's optimizer_type choices {space['optimizer_type']} have no Adam"
            )
        adam = "AdamW" if optimizer == "AdamW" else "Adam"
        space = {name: spec for name, spec in space.items() if applies(name, adam)}
        space["optimizer_type"] = [adam]
        check_space(space)
    return space


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
