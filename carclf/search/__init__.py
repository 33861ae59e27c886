"""The report's hyperparameter search (step 10), on a validation split of the training set (docs/search.md).

``space`` declares what is searched, ``objective`` runs one trial, ``skopt_backend`` (the default, the
report's choice) and ``optuna_backend`` choose the trials, ``result`` holds what a search returns.
"""

from carclf.search.optuna_backend import run_optuna_search
from carclf.search.result import SearchResult, param_importances
from carclf.search.skopt_backend import run_skopt_search
from carclf.search.space import OPTIMIZER_PARAMS, REPORT_SPACE, SEARCH_SPACE, search_space
from carclf.settings import SearchSettings
from carclf.splits import SplitView, subsample_split, validation_split

__all__ = [
    "OPTIMIZER_PARAMS",
    "REPORT_SPACE",
    "SEARCH_SPACE",
    "SearchResult",
    "SplitView",
    "param_importances",
    "run_optuna_search",
    "run_search",
    "run_skopt_search",
    "search_space",
    "subsample_split",
    "validation_split",
]


def run_search(model, train, settings: SearchSettings | None = None, **kwargs) -> SearchResult:
    """:func:`run_skopt_search` (the default, the report's choice) or :func:`run_optuna_search`, by
    ``settings.backend``; the other arguments are theirs."""
    settings = settings or SearchSettings()
    run = run_skopt_search if settings.backend == "skopt" else run_optuna_search
    return run(model, train, settings, **kwargs)
