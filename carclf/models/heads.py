"""What every model shares: which base layers train, the report's head, and the fine-tuning step."""

from __future__ import annotations

import logging
import os

import keras
import numpy as np
from keras import layers

from carclf.layers import AttentionBlock, CustomLayer, SEBlock
from carclf.models.registry import model_spec

log = logging.getLogger("carclf.models")

#: What a builder uses for a key missing from ``hyperparams``.
DEFAULT_HYPERPARAMS = {
    "x_trainable": "all",
    "dropout": 0.5,
    "spatial_dropout": 0.2,
    "fc_layers": (512,),
    "head": "report",
    "gates": True,
    "weights": None,
    "new_weights": None,
}

#: How many trailing base layers ``x_trainable="partial"`` leaves trainable.
PARTIAL_TRAINABLE_LAYERS = 4


def merged_hyperparams(hyperparams) -> dict:
    """:data:`DEFAULT_HYPERPARAMS` with ``hyperparams`` on top (other keys are kept and ignored)."""
    return {**DEFAULT_HYPERPARAMS, **(hyperparams or {})}


def fc_units(value) -> tuple:
    """``fc_layers`` as a tuple of ints (``None``: no fully connected layer)."""
    if value is None:
        return ()
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    return tuple(int(units) for units in value)


def check_input_shape(name, input_shape, need_rgb):
    """``(height, width, channels)`` of ``input_shape``, at least the model's minimum size."""
    shape = tuple(input_shape)
    if len(shape) != 3 or any(d is None for d in shape):
        raise ValueError(f"{name}: input_shape must be a fixed (height, width, channels), got {input_shape!r}")
    height, width, channels = (int(d) for d in shape)
    minimum = model_spec(name).min_input_size
    if height < minimum or width < minimum:
        raise ValueError(
            f"{name} needs inputs of at least {minimum}x{minimum} pixels; got {height}x{width}. "
            f"Resize the images to {minimum}x{minimum} or more."
        )
    if need_rgb and channels != 3:
        raise ValueError(f"{name} takes RGB images (3 channels); got input_shape={shape}")
    return height, width, channels


def _trainable_tail(x_trainable, n_base):
    """How many trailing base layers train for an ``x_trainable`` value."""
    if isinstance(x_trainable, str):
        key = x_trainable.strip().lower()
        if key == "all":
            return n_base
        if key == "none":
            return 0
        if key == "partial":
            return min(PARTIAL_TRAINABLE_LAYERS, n_base)
        if key.isdigit():
            return min(int(key), n_base)
    elif isinstance(x_trainable, (int, np.integer)) and not isinstance(x_trainable, bool) and x_trainable >= 0:
        return min(int(x_trainable), n_base)
    raise ValueError(f"x_trainable must be 'all', 'none', 'partial' or a non-negative integer; got {x_trainable!r}")


def set_trainable(base_layers, x_trainable):
    """Freeze base layers according to the report's ``x_trainable``; return how many are frozen.

    - ``"all"``: every base layer trains, BatchNormalization included (the report's parameter counts).
    - ``"none"``: every base layer is frozen.
    - ``"partial"``: all but the last 4 base layers are frozen.
    - an integer ``n`` (or a string of digits): all but the last ``n`` base layers are frozen.

    With any value other than ``"all"`` every BatchNormalization layer of the base stays frozen, so it runs
    in inference mode and keeps its moving statistics (the Keras transfer-learning guide's advice); those
    layers still count in ``n``. ``base_layers`` are the base's layers in order, input layer excluded.
    """
    base_layers = list(base_layers)
    n_train = _trainable_tail(x_trainable, len(base_layers))
    train_all = isinstance(x_trainable, str) and x_trainable.strip().lower() == "all"
    first_trainable = len(base_layers) - n_train
    for index, layer in enumerate(base_layers):
        trainable = index >= first_trainable
        if trainable and not train_all and isinstance(layer, layers.BatchNormalization):
            trainable = False
        layer.trainable = trainable
    return sum(1 for layer in base_layers if not layer.trainable)


def layer_counts(model):
    """``(n_layers, n_frozen)``: the model's layers, and those with ``trainable=False``."""
    return len(model.layers), sum(1 for layer in model.layers if not layer.trainable)


def add_classification_head(
    x,
    num_classes,
    *,
    fc_layers=(512,),
    dropout=0.5,
    spatial_dropout=0.2,
    custom_blocks=True,
    pooling="flatten",
    gates=True,
    top_dropout=False,
):
    """The head every report model puts on its transfer layer's output; returns the class probabilities.

    With ``gates``: ``SpatialDropout2D(spatial_dropout)``, ``AttentionBlock()``, ``SEBlock()``, then
    (``custom_blocks``) ``CustomLayer("attention")`` and ``CustomLayer("se")``. Then ``Flatten``
    (``pooling="flatten"``) or ``GlobalAveragePooling2D`` (``"avg"``); ``Dropout(dropout)`` with
    ``top_dropout`` (the modern head's, keras.io's ``top_dropout``); ``Dense(n, relu)`` and
    ``Dropout(dropout)`` for each ``n`` of ``fc_layers``; ``Dense(num_classes, softmax)`` in float32,
    named ``predictions``.
    """
    if pooling not in ("flatten", "avg"):
        raise ValueError(f"pooling must be 'flatten' or 'avg', got {pooling!r}")
    if gates:
        x = layers.SpatialDropout2D(spatial_dropout, name="head_spatial_dropout")(x)
        x = AttentionBlock(name="head_attention")(x)
        x = SEBlock(name="head_se")(x)
        if custom_blocks:
            x = CustomLayer("attention", name="head_custom_attention")(x)
            x = CustomLayer("se", name="head_custom_se")(x)
    if pooling == "flatten":
        x = layers.Flatten(name="head_flatten")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="head_avg_pool")(x)
    if top_dropout:
        x = layers.Dropout(dropout, name="head_top_dropout")(x)
    for index, units in enumerate(fc_layers, start=1):
        x = layers.Dense(int(units), activation="relu", name=f"head_fc{index}")(x)
        x = layers.Dropout(dropout, name=f"head_dropout{index}")(x)
    # float32 whatever the dtype policy: a float16 softmax is not stable
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def base_layers(base_model, transfer_layer):
    """``(transfer_layer, layers)``: the base's layers up to and including the transfer layer, inputs excluded."""
    if isinstance(transfer_layer, str):
        transfer_layer = base_model.get_layer(transfer_layer)
    found = []
    for layer in base_model.layers:
        if not isinstance(layer, layers.InputLayer):
            found.append(layer)
        if layer is transfer_layer:
            return transfer_layer, found
    raise ValueError(f"transfer layer {transfer_layer.name!r} is not a layer of {base_model.name!r}")


def model_input(base_model):
    """The base's input as one tensor (keras.applications keeps a one-element list), so the model takes an array."""
    inputs = keras.tree.flatten(base_model.inputs)
    return inputs[0] if len(inputs) == 1 else inputs


def load_new_weights(model, new_weights):
    """Load a weights file of the whole fine-tuned model (``.weights.h5`` or ``.keras``), if one is given."""
    if new_weights is None:
        return
    path = os.fspath(new_weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model.name}: no fine-tuned weights file at {path}")
    model.load_weights(path)


def finetune_model(
    base_model,
    transfer_layer,
    x_trainable="all",
    dropout=0.5,
    fc_layers=(512,),
    num_classes=196,
    new_weights=None,
    *,
    spatial_dropout=0.2,
    custom_blocks=True,
    pooling="flatten",
    gates=True,
    top_dropout=False,
    name="model",
):
    """Put the report's head on a base and set which layers train: the report's ``finetune_*`` in one.

    Args:
        base_model: the base network (a functional ``keras.Model``).
        transfer_layer: the base layer (or its name) the head is attached to.
        x_trainable: ``"all"``, ``"none"``, ``"partial"`` or an integer (:func:`set_trainable`); applies to
            the base layers up to the transfer layer; the head always trains.
        dropout: rate of the Dropout after each fully connected layer.
        fc_layers: units of the head's fully connected layers.
        num_classes: number of output classes.
        new_weights: optional weights file of the whole fine-tuned model, loaded into it.
        spatial_dropout, custom_blocks, pooling, gates, top_dropout: the head's variant
            (:func:`add_classification_head`).
        name: the model's name.

    Returns:
        ``(model, n_layers, n_frozen)``: the uncompiled model and the report's two counts "for verification".
    """
    transfer_layer, trunk = base_layers(base_model, transfer_layer)
    set_trainable(trunk, x_trainable)
    outputs = add_classification_head(
        transfer_layer.output,
        num_classes,
        fc_layers=fc_layers,
        dropout=dropout,
        spatial_dropout=spatial_dropout,
        custom_blocks=custom_blocks,
        pooling=pooling,
        gates=gates,
        top_dropout=top_dropout,
    )
    model = keras.Model(model_input(base_model), outputs, name=name)
    load_new_weights(model, new_weights)
    n_layers, n_frozen = layer_counts(model)
    log.info("%s: %d layers, %d frozen (x_trainable=%r)", name, n_layers, n_frozen, x_trainable)
    return model, n_layers, n_frozen


def finetune_for(name, default_fc_layers=(512,)):
    """The report's ``finetune_<name>``: :func:`finetune_model` with ``name``'s head variant from the registry."""

    def finetune(
        base_model,
        transfer_layer,
        x_trainable="all",
        dropout=0.5,
        fc_layers=default_fc_layers,
        num_classes=196,
        new_weights=None,
        spatial_dropout=0.2,
        *,
        head="report",
        gates=True,
    ):
        variant = model_spec(name).head
        report = head == "report"  # "gap": average pooling and a top dropout on every base
        return finetune_model(
            base_model,
            transfer_layer,
            x_trainable,
            dropout,
            fc_layers,
            num_classes,
            new_weights,
            spatial_dropout=spatial_dropout,
            custom_blocks=variant.custom_blocks and report,
            pooling=variant.pooling if report else "avg",
            gates=True if report else gates,
            top_dropout=not report,
            name=name,
        )

    finetune.__name__ = finetune.__qualname__ = f"finetune_{name}"
    finetune.__doc__ = (
        f"{name}'s head on ``base_model``: :func:`carclf.models.heads.finetune_model` with the registry's head "
        f"variant for {name!r} (``head='report'``) or the modern average-pooling head (``head='gap'``, the "
        f"report's gates optional). Returns ``(model, n_layers, n_frozen)``."
    )
    return finetune
