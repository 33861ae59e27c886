"""The workflow notebook, executed headless (papermill) with an HTML copy."""

from __future__ import annotations

from pathlib import Path

from carclf.cache import atomic_write
from carclf.paths import Paths

__all__ = ["NOTEBOOK", "run_notebook"]

NOTEBOOK = "notebooks/stanford_cars.ipynb"


def run_notebook(profile="demo", root=None, dataset=None, notebook=None, timeout=None, recipe=None):
    """Execute the workflow notebook headless (papermill) for ``profile``.

    ``recipe`` ("report" or "modern") replaces the profile's fine-tuning recipe. Writes the executed
    notebook and an HTML copy under ``reports/`` and
    returns their paths. Every stage is served from the stage cache when it has
    run before, so a second run takes a fraction of the first's time.
    """
    import papermill
    from nbconvert import HTMLExporter

    from carclf.paths import PROJECT_ROOT

    paths = Paths.default(root).make()
    source = Path(notebook or PROJECT_ROOT / NOTEBOOK)
    executed = paths.reports / f"stanford_cars_{profile}.ipynb"
    parameters = {
        "profile": profile,
        "root": str(paths.root),
        "dataset": None if dataset is None else str(dataset),
        "recipe": recipe,
    }
    papermill.execute_notebook(
        str(source),
        str(executed),
        parameters=parameters,
        cwd=str(source.parent),
        progress_bar=True,
        execution_timeout=timeout,
    )
    html, _ = HTMLExporter().from_filename(str(executed))
    html_path = executed.with_suffix(".html")
    atomic_write(html_path, html.encode("utf-8"))
    return executed, html_path
