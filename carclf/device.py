"""Which accelerator is present, and the mixed precision and XLA settings that follow (step 5).

The report switched on mixed precision and XLA compilation unconditionally.
Here they follow the hardware, and the caller can override them:

============================ ================================ ==========================
device                       mixed precision (``"auto"``)     XLA / jit (``"auto"``)
============================ ================================ ==========================
CPU only                     off (``float32``)                off on TensorFlow
NVIDIA GPU, compute >= 8.0   ``mixed_bfloat16``               on
NVIDIA GPU, compute 7.x      ``mixed_float16``, loss scaling  on
NVIDIA GPU, compute unknown  ``mixed_float16``, loss scaling  on
NVIDIA GPU, compute < 7.0    off (no tensor cores to gain)    on
TPU                          ``mixed_bfloat16``               on
============================ ================================ ==========================

bfloat16 has float32's exponent range, so it needs no loss scaling (no scaled loss, no skipped steps)
and runs at float16's speed on Ampere (8.0) and later; Volta and Turing have float16 tensor cores only.

On the JAX backend every train step is compiled with XLA anyway (that is how
JAX runs), so ``jit_compile="auto"`` is on there for every device.

Overrides: ``mixed_precision`` takes ``"auto"``, ``True`` (``mixed_float16``
whatever the device), ``False`` (``float32``), ``"float16"`` /
``"mixed_float16"``, ``"bfloat16"`` / ``"mixed_bfloat16"`` or ``"float32"``;
``jit_compile`` takes ``"auto"``, ``True`` or ``False``. The environment
variables ``CARCLF_MIXED_PRECISION`` and ``CARCLF_JIT_COMPILE`` override
``"auto"`` (a run profile or a CI job can set them without code changes).

The model's softmax output computes in float32 whatever the policy (the
builders in ``carclf.models`` give it ``dtype="float32"``), and with
``mixed_float16`` Keras wraps the optimizer in a ``LossScaleOptimizer`` at
compile time.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import keras

log = logging.getLogger("carclf.device")

__all__ = [
    "Accelerator",
    "DeviceConfig",
    "configure",
    "detect_accelerator",
    "precision_policy",
    "resolve_jit_compile",
    "resolve_precision",
]

_POLICY_NAMES = {
    "float32": "float32",
    "float16": "mixed_float16",
    "mixed_float16": "mixed_float16",
    "bfloat16": "mixed_bfloat16",
    "mixed_bfloat16": "mixed_bfloat16",
}


@dataclass(frozen=True)
class Accelerator:
    """What the current Keras backend can run on."""

    backend: str
    kind: str  # "gpu", "tpu" or "cpu"
    count: int = 0
    name: str = ""
    compute_capability: tuple | None = None

    def describe(self) -> str:
        if self.kind == "cpu":
            return f"CPU only ({self.backend} backend)"
        cc = ""
        if self.compute_capability:
            cc = f", compute capability {'.'.join(str(v) for v in self.compute_capability)}"
        return f"{self.count} {self.kind.upper()}(s) {self.name}{cc} ({self.backend} backend)"


def _parse_cc(value):
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return tuple(int(v) for v in value)
    try:
        return tuple(int(v) for v in str(value).split("."))
    except ValueError:
        return None


def _tensorflow_accelerator() -> Accelerator:
    import tensorflow as tf  # only on the TensorFlow backend

    tpus = tf.config.list_logical_devices("TPU")
    if tpus:
        return Accelerator("tensorflow", "tpu", len(tpus), "TPU")
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return Accelerator("tensorflow", "cpu")
    details = {}
    with contextlib.suppress(Exception):
        details = tf.config.experimental.get_device_details(gpus[0]) or {}
    return Accelerator(
        "tensorflow", "gpu", len(gpus), details.get("device_name", "GPU"), _parse_cc(details.get("compute_capability"))
    )


def _jax_accelerator() -> Accelerator:
    import jax  # only on the JAX backend

    devices = jax.devices()
    platform = devices[0].platform if devices else "cpu"
    if platform == "gpu" or platform == "cuda":
        first = devices[0]
        return Accelerator(
            "jax",
            "gpu",
            len(devices),
            getattr(first, "device_kind", "GPU"),
            _parse_cc(getattr(first, "compute_capability", None)),
        )
    if platform == "tpu":
        return Accelerator("jax", "tpu", len(devices), getattr(devices[0], "device_kind", "TPU"))
    return Accelerator("jax", "cpu")


def detect_accelerator() -> Accelerator:
    """The accelerator of the current Keras backend (a CPU-only result if detection fails)."""
    backend = keras.backend.backend()
    detect = {"tensorflow": _tensorflow_accelerator, "jax": _jax_accelerator}.get(backend)
    if detect is None:
        return Accelerator(backend, "cpu")
    try:
        return detect()
    except Exception as exc:  # a broken driver must not stop a CPU run
        log.warning(
            "could not detect accelerators on the %s backend (%s: %s); assuming CPU", backend, type(exc).__name__, exc
        )
        return Accelerator(backend, "cpu")


def resolve_precision(mixed_precision="auto", accelerator: Accelerator | None = None) -> str:
    """The Keras dtype policy name (``float32``, ``mixed_float16``, ``mixed_bfloat16``)."""
    if mixed_precision == "auto":
        mixed_precision = os.environ.get("CARCLF_MIXED_PRECISION", "auto").strip().lower() or "auto"
        if mixed_precision in ("1", "true", "on", "yes"):
            mixed_precision = True
        elif mixed_precision in ("0", "false", "off", "no"):
            mixed_precision = False
    if mixed_precision is True:
        return "mixed_float16"
    if mixed_precision is False or mixed_precision is None:
        return "float32"
    if mixed_precision == "auto":
        acc = accelerator or detect_accelerator()
        if acc.kind == "tpu":
            return "mixed_bfloat16"
        if acc.kind == "gpu":
            cc = acc.compute_capability
            if cc is not None and cc >= (8, 0):
                return "mixed_bfloat16"
            return "mixed_float16" if cc is None or cc >= (7, 0) else "float32"
        return "float32"
    if isinstance(mixed_precision, str) and mixed_precision.lower() in _POLICY_NAMES:
        return _POLICY_NAMES[mixed_precision.lower()]
    raise ValueError(
        f"mixed_precision must be 'auto', True, False, 'float16', 'bfloat16' or 'float32'; got {mixed_precision!r}"
    )


def resolve_jit_compile(jit_compile="auto", accelerator: Accelerator | None = None) -> bool:
    """Whether ``model.compile`` gets ``jit_compile=True``."""
    if jit_compile == "auto":
        env = os.environ.get("CARCLF_JIT_COMPILE", "auto").strip().lower() or "auto"
        if env in ("1", "true", "on", "yes"):
            return True
        if env in ("0", "false", "off", "no"):
            return False
        acc = accelerator or detect_accelerator()
        if acc.backend == "jax":
            return True
        return acc.kind != "cpu"
    if isinstance(jit_compile, bool):
        return jit_compile
    raise ValueError(f"jit_compile must be 'auto', True or False; got {jit_compile!r}")


@dataclass(frozen=True)
class DeviceConfig:
    """The resolved settings of one training run."""

    accelerator: Accelerator
    policy: str  # a keras dtype policy name
    jit_compile: bool

    @property
    def mixed(self) -> bool:
        return self.policy != "float32"


def configure(mixed_precision="auto", jit_compile="auto", accelerator: Accelerator | None = None) -> DeviceConfig:
    """Resolve both settings for this machine and log the decision.

    Does not change any global state: use :func:`precision_policy` around the
    model's construction to apply the policy, and pass ``jit_compile`` to
    ``model.compile``.
    """
    acc = accelerator or detect_accelerator()
    config = DeviceConfig(acc, resolve_precision(mixed_precision, acc), resolve_jit_compile(jit_compile, acc))
    log.info(
        "device: %s; dtype policy %s (asked %r); XLA/jit_compile %s (asked %r)",
        acc.describe(),
        config.policy,
        mixed_precision,
        config.jit_compile,
        jit_compile,
    )
    return config


@contextlib.contextmanager
def precision_policy(policy: str):
    """Set Keras's global dtype policy to ``policy`` inside the block, then restore it.

    Layers take the policy in force when they are created, so the model must
    be built inside the block; it keeps its policy afterwards (and in its
    ``.keras`` file).
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
