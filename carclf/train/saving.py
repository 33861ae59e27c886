"""Model files: written through a temporary name, published beside the run, read back with their policy."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

import keras
import numpy as np

from carclf.cache import atomic_open, atomic_write
from carclf.device import precision_policy

__all__ = ["history_csv", "load_model", "publish", "save_array", "save_model_atomic"]


def save_model_atomic(model, path) -> Path:
    """``model.save(path)`` through a temporary ``.keras`` file renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.{secrets.token_hex(6)}.tmp.keras"
    try:
        model.save(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path


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
    state with only a warning.
    """
    import carclf.layers  # noqa: F401  (registers the custom layers)

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
