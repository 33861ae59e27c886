"""Model files: written through a temporary name, published beside the run, read back with their policy."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

import keras
import numpy as np

from carclf.cache import DamagedFileError, atomic_open, atomic_write, check_free_space
from carclf.device import precision_policy

__all__ = [
    "check_model_file",
    "history_csv",
    "intact_model_file",
    "load_model",
    "load_weights",
    "publish",
    "save_array",
    "save_model_atomic",
    "save_weights_atomic",
    "variable_bytes",
]


def variable_bytes(variables) -> int:
    """The bytes the variables' values take."""
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)


def _bytes(variables) -> int:
    return variable_bytes(variables) + (1 << 20)  # and a file's config and headers


def _size_estimate(model) -> int:
    """The bytes a ``.keras`` file of ``model`` takes: its variables and its optimizer's, plus the config."""
    return _bytes(list(model.variables) + list(getattr(getattr(model, "optimizer", None), "variables", []) or []))


def _write_atomic(path, size, what, tmp_name, write) -> Path:
    """``write(tmp)`` into a temporary file beside ``path`` (after checking ``size`` bytes are free), then
    fsync and rename it over ``path``; the temporary file never outlives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(path.parent, size, f"{what} {path.name}")
    tmp = path.parent / tmp_name
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path


def save_model_atomic(model, path) -> Path:
    """``model.save(path)`` through a temporary ``.keras`` file renamed over ``path``; the space it needs
    (estimated from the parameter count) is checked first."""
    tmp_name = f".{Path(path).stem}.{secrets.token_hex(6)}.tmp.keras"
    return _write_atomic(path, _size_estimate(model), "the model file", tmp_name, model.save)


def _without_optimizer(model):
    optimizer = getattr(model, "optimizer", None)
    return None if optimizer is None else [optimizer]


def save_weights_atomic(model, path) -> Path:
    """The model's weights, without its optimizer's state, in a ``.weights.h5`` file written through a
    temporary file renamed over ``path``; the space the weights take is checked first."""
    from keras.src.saving import saving_lib  # ``Model.save_weights`` has no way to leave the optimizer out

    def write(tmp):
        saving_lib.save_weights_only(model, str(tmp), objects_to_skip=_without_optimizer(model))

    tmp_name = f".{secrets.token_hex(6)}.tmp.{Path(path).name}"
    return _write_atomic(path, _bytes(model.weights), "the weights file", tmp_name, write)


def load_weights(model, path):
    """Weights written by :func:`save_weights_atomic` into ``model`` (its optimizer left as it is)."""
    from keras.src.saving import saving_lib

    saving_lib.load_weights_only(model, str(path), objects_to_skip=_without_optimizer(model))
    return model


def publish(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source``: an atomic hard link, or a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        os.link(source, tmp)
        os.replace(tmp, target)
        return
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
    with open(source, "rb") as src, atomic_open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def check_model_file(path) -> Path:
    """``path`` if it is a whole ``.keras`` file: a zip archive whose every member matches its CRC-32 (the
    checksum the format carries); else :class:`carclf.cache.DamagedFileError` naming it."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise DamagedFileError(path, f"not a whole .keras file ({exc})") from None
    if bad is not None or "config.json" not in names:
        raise DamagedFileError(path, f"a damaged .keras file ({bad or 'no config.json'} does not match its checksum)")
    return Path(path)


def intact_model_file(path) -> bool:
    """Whether ``path`` is there and whole (:func:`check_model_file`)."""
    try:
        check_model_file(path)
    except DamagedFileError:
        return False
    return True


def _saved_mixed_policy(path):
    """The mixed dtype policy a ``.keras`` file was saved under, or None."""
    import re
    import zipfile

    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode("utf-8")
    found = re.search(r'"(mixed_(?:b?float16))"', config)
    return found.group(1) if found else None


def load_model(path, compile: bool = True):
    """``keras.models.load_model`` with carclf's custom layers and schedule registered.

    A model saved under a mixed precision policy is loaded under that policy:
    under float32, Keras would drop its LossScaleOptimizer and the optimizer
    state with only a warning. A truncated or damaged file raises
    :class:`carclf.cache.DamagedFileError` naming it.
    """
    import carclf.layers  # noqa: F401  (registers the custom layers)

    check_model_file(path)
    policy = _saved_mixed_policy(path)
    with precision_policy(policy) if policy else contextlib.nullcontext():
        return keras.models.load_model(path, compile=compile)


def save_array(path, array) -> Path:
    """``np.save`` to ``path`` atomically."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return atomic_write(Path(path), buffer.getvalue())


def history_csv(history: dict) -> bytes:
    import pandas as pd

    frame = pd.DataFrame(history)
    frame.insert(0, "epoch", np.arange(1, len(frame) + 1))
    return frame.to_csv(index=False).encode()
