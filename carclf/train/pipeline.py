"""The report's ``run_model_pipeline``: build, compile, train, test and save one model, crash-proof.

The steps are named: plan the run (its stage key), build the model, restore a killed run's state, fit one
phase, finish (save, test, publish). docs/training.md has the decisions behind them.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from carclf.cache import atomic_write, qualname
from carclf.device import DeviceConfig, configure, precision_policy
from carclf.evaluate import evaluate_predictions, labels_in_order, predict_probabilities
from carclf.generators import Generators, describe_generator
from carclf.metrics import report_metrics
from carclf.paths import Store
from carclf.settings import SettingsError, TrainSettings
from carclf.train.callbacks import create_callbacks
from carclf.train.optimizers import TRAINING_KEYS, current_lr, make_optimizer, optimizer_settings
from carclf.train.result import TrainResult
from carclf.train.resume import TRAIN_FORMAT, Clock, ResumableState, load_state, write_state
from carclf.train.saving import history_csv, intact_model_file, publish, save_array, save_model_atomic
from carclf.train.writer import BackgroundWriter

BEST_WEIGHTS = "best.weights.h5"  # the checkpoint: the best epoch's weights, no optimizer

log = logging.getLogger("carclf.train")

__all__ = ["filter_hyperparams", "make_loss", "run_model_pipeline"]


def filter_hyperparams(model_func: Callable, hyperparams: dict | None) -> tuple[dict, dict]:
    """The builder's share of ``hyperparams``, chosen by its signature (the report's step).

    Returns ``(call_kwargs, used)``: the keyword arguments for ``model_func(input_shape, num_classes,
    **call_kwargs)`` and the hyperparameters they carry (what the stage key records).

    - A builder with named parameters (the report's style, ``f(input_shape, num_classes, dropout,
      x_trainable)``) gets the hyperparameters that match a parameter name; the rest are dropped (the
      report's example: DenseNet's builder takes no ``dropout``).
    - A builder with a ``hyperparams`` parameter gets one dict without the training keys (optimizer settings,
      batch size); for a registered ``carclf.models`` builder only the keys of
      ``carclf.models.DEFAULT_HYPERPARAMS``, defaults filled in, so spelling out a default keeps the key.
    """
    from carclf.models import DEFAULT_HYPERPARAMS, is_builder

    params = inspect.signature(model_func).parameters
    model_keys = {k: v for k, v in dict(hyperparams or {}).items() if k not in TRAINING_KEYS}
    if "hyperparams" in params:
        if is_builder(model_func):
            used = {k: model_keys.get(k, default) for k, default in DEFAULT_HYPERPARAMS.items()}
        else:
            used = model_keys
        call_kwargs = {"hyperparams": dict(used)}
    else:
        named = {
            name
            for name, p in params.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in ("input_shape", "num_classes")
        }
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
        used = model_keys if takes_any else {k: v for k, v in model_keys.items() if k in named}
        call_kwargs = dict(used)
    dropped = sorted(set(model_keys) - set(used))
    if dropped:
        log.info("%s does not read hyperparameters %s; left out", qualname(model_func), dropped)
    return call_kwargs, used


def plan_phases(settings: TrainSettings) -> list[dict]:
    """The report's single phase, or the head phase then the fine-tuning phase (``two_phase``)."""
    epochs = settings.epochs
    if not settings.two_phase:
        return [{"index": 0, "name": "single", "end": epochs, "lr_scale": 1.0}]
    if epochs < 2:
        raise SettingsError("two-phase fine-tuning needs epochs >= 2 (head epochs, then fine-tuning epochs)")
    head = settings.head_epochs if settings.head_epochs is not None else min(5, max(1, epochs // 4))
    if not 1 <= head < epochs:
        raise SettingsError(f"head_epochs must be between 1 and epochs - 1 ({epochs - 1}), got {head!r}")
    return [
        {"index": 0, "name": "head", "end": head, "lr_scale": 1.0},
        {"index": 1, "name": "finetune", "end": epochs, "lr_scale": settings.finetune_lr_scale},
    ]


@dataclass
class _Run:
    """One training run: what it trains, where its files go, and its stage key."""

    model_func: Callable
    model_name: str
    call_kwargs: dict
    builder_hp: dict
    opt: dict
    input_shape: tuple
    num_classes: int
    generators: Generators  # train, validation (selects the epoch) and test (read once, after training)
    settings: TrainSettings
    phases: list
    device: DeviceConfig
    seed: int | None
    store: Store
    extra_callbacks: list
    key: str = ""

    @property
    def run_dir(self) -> Path:
        return self.store.paths.models / self.model_name / self.key

    @property
    def state_path(self) -> Path:
        return self.run_dir / "resume" / "state.pkl"

    @property
    def two_phase(self) -> bool:
        return len(self.phases) > 1

    def config(self) -> dict:
        """What the stage key ``train-<name>`` covers."""
        return {
            "format": TRAIN_FORMAT,
            "model_name": self.model_name,
            "builder": qualname(self.model_func),
            "hyperparams": self.builder_hp,
            "optimizer": self.opt,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "epochs": self.settings.epochs,
            "phases": self.phases,
            "policy": self.device.policy,
            "callbacks": self.settings.callbacks,
            "schedule": {"name": self.settings.schedule, "warmup": self.settings.warmup},
            "label_smoothing": self.settings.label_smoothing,
            "ema": self.settings.ema_momentum if self.settings.ema else None,
            "seed": self.seed,
            "train": describe_generator(self.generators.train),
            "validation": describe_generator(self.generators.validation),
            "test": describe_generator(self.generators.test),
        }


def run_model_pipeline(
    model_func,
    model_name,
    hyperparams,
    input_shape,
    num_classes,
    train_generator,
    test_generator,
    epochs=None,
    accum_steps=None,
    *,
    validation_generator=None,
    settings: TrainSettings | None = None,
    store: Store | None = None,
    deps=(),
    seed: int | None = 0,
    timer_group: str = "default",
    extra_callbacks=(),
) -> TrainResult:
    """Build, compile, train, test and save one model; load the result if it was already trained.

    Args:
        model_func: the builder, ``model_func(input_shape, num_classes, ...)`` (e.g.
            ``carclf.models.create_resnet50_model``); its hyperparameters are chosen by
            :func:`filter_hyperparams`.
        model_name: the model's name (folders, logs, the stage ``train-<name>``).
        hyperparams: model and optimizer hyperparameters (the report's dict).
        input_shape, num_classes: the model's input and number of classes.
        train_generator, test_generator: batches of ``(images, one-hot labels)``.
        validation_generator: the batches that select the epoch (early stopping, the learning-rate
            schedule, the checkpoint, the kept epoch); the test batches are then read once, after training.
            ``None``: the report's protocol, the test batches are the validation data.
        epochs, accum_steps: the report's arguments; when given they replace ``settings``'s.
        settings: how to train (:class:`carclf.settings.TrainSettings`: phases, callbacks, precision...).
        store: where results go (default ``Store.at()``); its timer, if any, records the training as stage
            ``model_name`` in group ``timer_group``.
        deps: upstream ``StageResult`` objects (decoded data, augmented set, search), so new data retrains.
        seed: ``keras.utils.set_random_seed`` before building (``None``: leave the seeds alone).
        extra_callbacks: more Keras callbacks, run after the epoch's state is saved.

    Raises:
        UnknownOptimizerError: ``optimizer_type`` is not Adam, AdamW, SGD, RMSprop or Adagrad.
        NonFiniteLossError: the loss became NaN or infinite.
    """
    settings = settings or TrainSettings()
    changes = {k: v for k, v in (("epochs", epochs), ("accum_steps", accum_steps)) if v is not None}
    settings = settings.override(**changes) if changes else settings
    store = store or Store.at()
    generators = Generators(train_generator, validation_generator or test_generator, test_generator)
    run = _plan(
        model_func,
        model_name,
        hyperparams,
        input_shape,
        num_classes,
        generators,
        settings,
        store,
        seed,
        extra_callbacks,
    )
    return _run_stage(run, list(deps), timer_group)


def _run_stage(run: _Run, deps: list, timer_group: str) -> TrainResult:
    """The run as the stage ``train-<name>``: loaded when it has finished before, else trained and stored."""
    store, stage = run.store, f"train-{run.model_name}"
    config = run.config()
    run.key = store.cache.key(stage, config, deps)
    _forget_lost_run(run, stage)

    def compute():
        timer = store.timer.stage(run.model_name, group=timer_group) if store.timer else contextlib.nullcontext()
        with timer:
            return _train(run)

    result = store.cache.run(stage, config, compute, deps=deps)
    if result.loaded:
        log.info(
            "%s: loaded the finished run %s (%d epochs) instead of training",
            run.model_name,
            result.key,
            result.value["epochs_run"],
        )
    shutil.rmtree(run.run_dir / "resume", ignore_errors=True)  # the result is stored: no resume needed
    trained = TrainResult.from_value(result.value, result.key, result.loaded, store.paths)
    if run.settings.plot and trained.epochs_run and not trained.plot_path.is_file():
        from carclf.report import plot_history  # the report layer draws the curves, from the stored history

        plot_history(trained.history, run.model_name, out_path=trained.plot_path)
    return trained


def _forget_lost_run(run: _Run, stage: str) -> None:
    """A stored result whose model file is gone or damaged is trained again rather than handed out (a reader,
    which may not train, keeps it and says so when it needs the file)."""
    model_file = run.run_dir / f"{run.model_name}.keras"
    cache = run.store.cache
    if cache.may_compute(stage) and cache.exists(stage, run.key) and not intact_model_file(model_file):
        log.warning(
            "%s: the stored result %s has lost its model file %s (missing or damaged); training again",
            run.model_name,
            run.key,
            model_file,
        )
        run.store.cache.invalidate(stage, run.key)


def _plan(
    model_func, model_name, hyperparams, input_shape, num_classes, generators, settings, store, seed, extra_callbacks
) -> _Run:
    call_kwargs, builder_hp = filter_hyperparams(model_func, hyperparams)
    settings.check_combination()
    if settings.two_phase and not ("x_trainable" in builder_hp or "hyperparams" in call_kwargs):
        raise SettingsError(
            f"two-phase fine-tuning needs a builder that takes x_trainable; {qualname(model_func)} does not"
        )
    return _Run(
        model_func=model_func,
        model_name=model_name,
        call_kwargs=call_kwargs,
        builder_hp=builder_hp,
        opt=optimizer_settings(hyperparams, settings.accum_steps),
        input_shape=tuple(int(v) for v in input_shape),
        num_classes=int(num_classes),
        generators=generators,
        settings=settings,
        phases=plan_phases(settings),
        device=configure(settings.mixed_precision, settings.jit_compile),
        seed=seed,
        store=store,
        extra_callbacks=list(extra_callbacks),
    )


def _train(run: _Run) -> dict:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(run.state_path, run.key)
    if state is not None:
        log.info(
            "%s: resuming after epoch %d (phase %d) from %s",
            run.model_name,
            state["epoch"] + 1,
            state["phase"],
            run.state_path,
        )
    resumed_from = None if state is None else state["epoch"] + 1
    clock = Clock(state["elapsed"] if state is not None else (0.0, 0.0))
    history = {k: list(v) for k, v in state["history"].items()} if state is not None else {}
    model, frozen_in_head = _build(run)
    stopped_early, kept, checkpoint = False, None, None
    writer = BackgroundWriter(write_state, background=run.settings.background_state)
    try:
        for phase in run.phases:
            if state is not None and phase["index"] < state["phase"]:
                continue  # finished before the restart; its weights are in the state of a later phase
            own = state if state is not None and phase["index"] == state["phase"] else None
            stopped_early, kept, checkpoint = _fit_phase(run, model, phase, frozen_in_head, history, clock, own, writer)
            state = None
    finally:
        writer.flush()  # the last state is on disk before the run ends, fails or is interrupted
    if checkpoint is not None:
        checkpoint.write(model)
    return _finish(run, model, history, clock, stopped_early, kept, resumed_from)


def _build(run: _Run):
    """The model under the device's dtype policy (base frozen for a head phase); its summary written."""
    if run.seed is not None:
        keras.utils.set_random_seed(int(run.seed))
    kwargs = dict(run.call_kwargs)
    if run.two_phase:
        if "hyperparams" in kwargs:
            kwargs["hyperparams"] = {**kwargs["hyperparams"], "x_trainable": "none"}
        else:
            kwargs["x_trainable"] = "none"
    with precision_policy(run.device.policy):
        model = run.model_func(run.input_shape, run.num_classes, **kwargs)
    frozen_in_head = [layer for layer in _walk_layers(model) if not layer.trainable] if run.two_phase else []
    if run.two_phase and not frozen_in_head:
        log.warning(
            "%s: built with x_trainable='none' it has no frozen layer; the head phase trains everything", run.model_name
        )
    summary = _summary_text(model, run)
    atomic_write(run.run_dir / "summary.txt", summary.encode())
    if run.settings.verbose not in (0, False):
        print(summary)
    return model, frozen_in_head


def _fit_phase(run: _Run, model, phase, frozen_in_head, history, clock, state, writer) -> tuple:
    """Compile and fit one phase (from ``state``'s next epoch when resuming); ``writer`` writes its states.

    Returns ``(stopped early, the 0-based epoch whose weights the model keeps, the best checkpoint)``.
    """
    _set_phase_trainable(frozen_in_head, phase["name"])
    steps = _phase_steps(run, phase)
    optimizer, schedule = make_optimizer(run.opt, lr_scale=phase["lr_scale"], train=run.settings, steps=steps)
    model.compile(
        optimizer=optimizer,
        loss=make_loss(run.settings.label_smoothing),
        metrics=report_metrics(),
        jit_compile=run.device.jit_compile,
        steps_per_execution=run.settings.steps_per_execution,
    )
    callbacks = _phase_callbacks(run, phase, schedule)
    saver = ResumableState(
        run.state_path,
        key=run.key,
        phase=phase,
        callbacks=callbacks,
        schedule=schedule,
        train_generator=run.generators.train,
        history=history,
        history_path=run.run_dir / "history.csv",
        clock=clock,
        record_phase=run.two_phase,
        writer=writer,
        interval=run.settings.state_interval,
    )
    start, stopped = len(next(iter(history.values()), [])), False
    if state is not None:
        start, stopped = saver.resume(model, state)
    _log_phase(run, model, phase, start, steps)
    if not stopped and start < phase["end"]:
        # The generator shuffles itself per (seed, epoch); Keras's own shuffle draws from the global NumPy
        # RNG, which a resumed process would not replay.
        model.fit(
            run.generators.train,
            validation_data=run.generators.validation,
            epochs=phase["end"],
            initial_epoch=start,
            callbacks=callbacks.as_list(saver),
            verbose=run.settings.verbose,
            shuffle=False,
        )
    if run.settings.ema:  # fit ends with the averaged weights in the model; a resumed, finished phase did not fit
        model.optimizer.finalize_variable_values(model.trainable_variables)
    es = callbacks.early_stopping
    kept = len(next(iter(history.values()), [])) - 1  # the last epoch, unless early stopping keeps its best
    if es is not None and es.restore_best_weights and es.best_weights is not None:
        model.set_weights(es.best_weights)
        kept = int(es.best_epoch)
    # an early stop of the head phase only starts the fine-tuning sooner; the last phase's decides
    return es is not None and es.stopped_epoch > 0, kept, callbacks.checkpoint


def _log_phase(run: _Run, model, phase, start, steps) -> None:
    accumulating = f", gradient accumulation over {run.opt['accum_steps']} batches" if run.opt["accum_steps"] else ""
    rate = f"learning rate {current_lr(model.optimizer):.3g}"
    if run.settings.schedule == "warmup_cosine":
        peak = run.opt["learning_rate"] * phase["lr_scale"]
        rate += f" (warmup to {peak:.3g}, then cosine to 0 over {steps} steps)"
    log.info(
        "%s: phase %s, epochs %d..%d of %d, %s%s",
        run.model_name,
        phase["name"],
        start + 1,
        phase["end"],
        run.phases[-1]["end"],
        rate,
        accumulating,
    )


def _phase_callbacks(run: _Run, phase, schedule):
    settings, paths = run.settings, run.store.paths
    return create_callbacks(
        run.model_name,
        settings=settings.callbacks,
        checkpoint_path=run.run_dir / BEST_WEIGHTS,
        tensorboard_dir=paths.logs / "tensorboard" / run.model_name / run.key if settings.tensorboard else None,
        schedule=schedule,
        learning_rate=run.opt["learning_rate"] * phase["lr_scale"],
        state_path=run.state_path,
        extra=run.extra_callbacks,
        verbose=0 if settings.verbose in (0, False) else 1,
        ema=settings.ema,
        check_every=settings.nonfinite_check_steps,
    )


def _phase_steps(run: _Run, phase) -> int:
    """The optimizer iterations of a whole phase (a per-step schedule spans them, also when resumed)."""
    start = run.phases[phase["index"] - 1]["end"] if phase["index"] else 0
    return (phase["end"] - start) * len(run.generators.train)


def make_loss(label_smoothing=0.0):
    """The report's categorical cross-entropy; with ``label_smoothing``, its targets moved that far towards
    uniform (the modern recipe's 0.1)."""
    if not label_smoothing:
        return "categorical_crossentropy"
    return keras.losses.CategoricalCrossentropy(label_smoothing=float(label_smoothing))


def _finish(run: _Run, model, history, clock, stopped_early, kept, resumed_from) -> dict:
    """Save the final model, test it once, publish its files; the stage result."""
    paths, settings, run_dir = run.store.paths, run.settings, run.run_dir
    history_path = run_dir / "history.csv"
    epochs_run = len(next(iter(history.values()), []))
    if epochs_run and not history_path.exists():
        atomic_write(history_path, history_csv(history))
    model_path = save_model_atomic(model, run_dir / f"{run.model_name}.keras")
    test_metrics, probabilities_path = {}, None
    if settings.evaluate:  # the test set is read here, once, after the epoch was chosen on the validation data
        probabilities = predict_probabilities(model, run.generators.test)
        probabilities_path = save_array(run_dir / "test_probabilities.npy", probabilities)
        test_metrics = evaluate_predictions(labels_in_order(run.generators.test), probabilities).metrics
        log.info("%s: test %s", run.model_name, ", ".join(f"{k} {v:.4f}" for k, v in test_metrics.items()))
    for source in (model_path, run_dir / "summary.txt", history_path):
        if source.exists():
            publish(source, paths.models / run.model_name / source.name)
    tensorboard_dir = paths.logs / "tensorboard" / run.model_name / run.key
    wall, cpu = clock()

    def rel(path):
        return None if path is None or not Path(path).exists() else Path(path).relative_to(paths.models).as_posix()

    return {
        "model_name": run.model_name,
        "history": history,
        "epochs_run": epochs_run,
        "stopped_early": stopped_early,
        "validation": run.generators.protocol,
        "kept_epoch": None if kept is None or kept < 0 else kept + 1,
        "val_metrics": {k[4:]: float(v[kept]) for k, v in history.items() if k.startswith("val_") and kept is not None},
        "test_metrics": test_metrics,
        "wall_min": wall / 60,
        "cpu_min": cpu / 60,
        "policy": run.device.policy,
        "jit_compile": run.device.jit_compile,
        "hyperparams": run.builder_hp,
        "optimizer": run.opt,
        "files": {
            "model": rel(model_path),
            "best": rel(run_dir / BEST_WEIGHTS),
            "summary": rel(run_dir / "summary.txt"),
            "history": rel(history_path),
            "test_probabilities": rel(probabilities_path),
        },
        "tensorboard": tensorboard_dir.relative_to(paths.root).as_posix() if tensorboard_dir.is_dir() else None,
        "resumed_from_epoch": resumed_from,
    }


def _walk_layers(model):
    """Every layer, nested models' layers included, each container before its own layers."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk_layers(layer)


def _set_phase_trainable(frozen_in_head: list, phase_name: str) -> None:
    """Phase 2: unfreeze the base layers frozen in phase 1, BatchNormalization excepted.

    ``frozen_in_head`` is in :func:`_walk_layers` order, so a nested model is unfrozen (which unfreezes all
    its layers) before its BatchNormalization layers are frozen again.
    """
    if phase_name != "finetune":
        return
    for layer in frozen_in_head:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)


def _no_notebook_display():
    """Keras renders the summary through rich, which in a notebook leaves an empty output block per call
    even when the text is captured; IPython's capture swallows it. Outside IPython: nothing to do."""
    try:
        from IPython import get_ipython
        from IPython.utils.capture import capture_output
    except ImportError:
        return contextlib.nullcontext()
    return capture_output(stdout=False, stderr=False) if get_ipython() is not None else contextlib.nullcontext()


def _summary_text(model, run: _Run) -> str:
    lines: list[str] = []
    with _no_notebook_display():
        model.summary(print_fn=lambda text, *args, **kwargs: lines.append(str(text)), line_length=120)
    n_frozen = sum(1 for layer in model.layers if not layer.trainable)
    device = run.device
    lines += [
        "",
        f"model: {run.model_name}; layers: {len(model.layers)}, frozen: {n_frozen}",
        f"dtype policy: {device.policy}; jit_compile: {device.jit_compile}; device: {device.accelerator.describe()}",
        f"optimizer: {run.opt}",
        f"model hyperparameters: {run.builder_hp}",
    ]
    return "\n".join(lines) + "\n"
