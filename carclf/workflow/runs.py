"""Every trained run in the stage cache, whatever its epochs or settings: the ones a reading command may use.

A run is found by the note written beside its stage result when it was trained or loaded through the
workflow (:func:`carclf.workflow.stages.note_runs`): its model, label, profile and dataset. The run of the
current settings wins; else the most recently written one; either way the command says which it took.
"""

from __future__ import annotations

import logging

from carclf.workflow.stages import load_dataset, result_row, stored

log = logging.getLogger("carclf.workflow")

__all__ = ["describe_run", "stored_run", "stored_runs"]


def stored_runs(ws, name, label) -> list[tuple[str, dict]]:
    """``(key, note)`` of the finished runs of model ``name`` with ``label`` in this profile and dataset,
    the most recently written first."""
    dataset = stored(ws, "dataset", load_dataset).key
    return [
        (key, meta)
        for key, meta in ws.cache.stored(f"train-{name}")
        if (meta.get("label"), meta.get("profile"), meta.get("dataset")) == (label, ws.profile, dataset)
    ]


def describe_run(meta: dict) -> str:
    """What sets a run apart, for people: its epochs and input size, when it was written."""
    config = meta.get("config", {})
    shape = config.get("input_shape") or ["?", "?"]
    epochs = config.get("epochs", "?")
    return f"{epochs} epoch{'' if epochs == 1 else 's'}, {shape[0]}x{shape[1]}, written {meta.get('written', '?')}"


def stored_run(ws, name, label, exact_key=None):
    """``(row, note)``: the comparison row of the run to use for ``name`` / ``label`` and a sentence saying which
    run that is when there was a choice (else None); ``(None, None)`` when no run is stored.

    ``exact_key`` is the key of the run of the current settings when it is stored: it wins.
    """
    from carclf.train import TrainResult
    from carclf.train.saving import intact_model_file

    runs = stored_runs(ws, name, label)
    if exact_key is not None:
        others = len([key for key, _ in runs if key != exact_key])
        note = None
        if others:
            note = (
                f"{name} ({label}): using the run of the current settings ({exact_key}); "
                f"{others} other stored run(s) of it were trained under other settings"
            )
        return None, note
    for key, meta in runs:
        result = ws.cache.load(f"train-{name}", key)
        model_file = ws.paths.models / name / key / f"{name}.keras"
        if result is None or not intact_model_file(model_file):
            log.warning("%s (%s): the stored run %s has lost its model file %s; left out", name, label, key, model_file)
            continue
        row = result_row(name, label, TrainResult.from_value(result.value, key, True, ws.paths))
        note = (
            f"{name} ({label}): no run of the current settings; using run {key} ({describe_run(meta)}), "
            f"the latest of {len(runs)} stored"
        )
        log.info("%s", note)
        return row, note
    return None, None
