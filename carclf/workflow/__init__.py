"""The notebook's stages as calls: each loads its cached result or computes it (docs/architecture.md).

A :class:`Workspace` ties one run together; ``stages`` are the report's steps in order; ``results`` reads
what was trained; ``reports`` writes the plots and tables under ``reports/``; ``notebook`` runs the
notebook headless. The notebook and ``python -m carclf`` call the same functions, so a stage re-run from
either place is served from the same cache.
"""

from carclf.settings import LABELS
from carclf.workflow.notebook import NOTEBOOK, run_notebook
from carclf.workflow.reports import (
    REPORT_FILES,
    plot_augmentations,
    plot_comparison,
    plot_evaluation,
    plot_histories,
    plot_search,
    plot_timings,
    protocol_summary,
    recipe_table,
    report_path,
    summary,
    write_report,
)
from carclf.workflow.results import (
    EXPENSIVE_STAGES,
    ImageFileError,
    ModelFileError,
    NotTrainedError,
    evaluate_best,
    evaluate_run,
    histories,
    model_path,
    predict,
    test_probabilities,
    trained_run,
    trained_runs,
    with_uncertainty,
)
from carclf.workflow.stages import (
    augment_images,
    compare_default_optimal,
    configure_device,
    dataset_root,
    decode_images,
    generators,
    load_dataset,
    model_hyperparams,
    search_hyperparameters,
    search_model,
    search_summary,
    searched_models,
    train_model,
    train_models,
)
from carclf.workflow.workspace import Workspace

__all__ = [
    "EXPENSIVE_STAGES",
    "ImageFileError",
    "LABELS",
    "ModelFileError",
    "NOTEBOOK",
    "NotTrainedError",
    "REPORT_FILES",
    "Workspace",
    "augment_images",
    "compare_default_optimal",
    "configure_device",
    "dataset_root",
    "decode_images",
    "evaluate_best",
    "evaluate_run",
    "generators",
    "histories",
    "load_dataset",
    "model_hyperparams",
    "model_path",
    "plot_augmentations",
    "plot_comparison",
    "plot_evaluation",
    "plot_histories",
    "plot_search",
    "plot_timings",
    "predict",
    "protocol_summary",
    "recipe_table",
    "report_path",
    "run_notebook",
    "search_hyperparameters",
    "search_model",
    "search_summary",
    "searched_models",
    "summary",
    "test_probabilities",
    "train_model",
    "train_models",
    "trained_run",
    "trained_runs",
    "with_uncertainty",
    "write_report",
]
