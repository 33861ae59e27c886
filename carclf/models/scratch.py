"""The two models trained from scratch: model1 (carclf's small CNN) and the report's AlexNet."""

from __future__ import annotations

import keras
from keras import layers

from carclf.layers import ImagePreprocessing
from carclf.models.heads import (
    base_layers,
    check_input_shape,
    fc_units,
    finetune_for,
    layer_counts,
    load_new_weights,
    merged_hyperparams,
    model_input,
    set_trainable,
)
from carclf.models.registry import Head, register_model

#: AlexNet's classic classifier; the report's counts use it, not ``fc_layers``.
ALEXNET_FC_LAYERS = (4096, 4096)


def _model1_trunk(input_shape):
    """model1's convolutional trunk: four Conv-BN-ReLU-MaxPool blocks."""
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = ImagePreprocessing("tf", name="preprocessing")(inputs)
    for block, filters in enumerate((32, 64, 128, 256), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv")(x)
        x = layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = layers.Activation("relu", name=f"block{block}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="model1_trunk")


def finetune_model1(
    base_model, transfer_layer, x_trainable="all", dropout=0.5, fc_layers=(), num_classes=196, new_weights=None
):
    """model1's head: ``GlobalAveragePooling2D``, ``Dropout``, optional ``Dense`` layers, the softmax.

    model1 does not use the report's attention head. Arguments and return value as
    :func:`carclf.models.heads.finetune_model`.
    """
    transfer_layer, trunk = base_layers(base_model, transfer_layer)
    set_trainable(trunk, x_trainable)
    x = layers.GlobalAveragePooling2D(name="head_avg_pool")(transfer_layer.output)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    for index, units in enumerate(fc_layers, start=1):
        x = layers.Dense(int(units), activation="relu", name=f"head_fc{index}")(x)
        x = layers.Dropout(dropout, name=f"head_fc_dropout{index}")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    model = keras.Model(model_input(base_model), outputs, name="model1")
    load_new_weights(model, new_weights)
    n_layers, n_frozen = layer_counts(model)
    return model, n_layers, n_frozen


@register_model("model1", min_input_size=16, preprocessing="tf")
def create_model1_model(input_shape, num_classes, hyperparams=None):
    """model1: a small CNN trained from scratch, sized for CPU training at 64x64 (docs/models.md).

    The report names it ("provided by Salim") without describing it. Pixels are scaled to [-1, 1]; four
    blocks of ``Conv2D(f, 3x3, same, no bias)``, ``BatchNormalization``, ``ReLU``, ``MaxPooling2D(2)`` with
    f = 32, 64, 128, 256; then ``GlobalAveragePooling2D``, ``Dropout(dropout)`` and the softmax. About 0.39M
    parameters plus 257 per class. The smallest input is 16x16.

    Args:
        input_shape: ``(height, width, channels)`` of the images.
        num_classes: number of output classes.
        hyperparams: reads ``dropout``, ``x_trainable`` (applied to the trunk) and ``new_weights``.

    Returns:
        An uncompiled ``keras.Model``.
    """
    hp = merged_hyperparams(hyperparams)
    check_input_shape("model1", input_shape, need_rgb=False)
    trunk = _model1_trunk(input_shape)
    model, _, _ = finetune_model1(
        trunk,
        trunk.layers[-1],
        x_trainable=hp["x_trainable"],
        dropout=hp["dropout"],
        num_classes=num_classes,
        new_weights=hp["new_weights"],
    )
    return model


def _alexnet_trunk(input_shape):
    """AlexNet's five convolutions (spec-notes section 2), BatchNormalization after each."""
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = ImagePreprocessing("tf", name="preprocessing")(inputs)
    convs = [
        # (filters, kernel, strides, padding, max-pool after)
        (96, 11, 4, "valid", True),
        (256, 5, 1, "same", True),
        (384, 3, 1, "same", False),
        (384, 3, 1, "same", False),
        (256, 3, 1, "same", True),
    ]
    pool = 0
    for index, (filters, kernel, strides, padding, pooled) in enumerate(convs, start=1):
        x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, activation="relu", name=f"conv{index}")(x)
        x = layers.BatchNormalization(name=f"conv{index}_bn")(x)
        if pooled:
            pool += 1
            x = layers.MaxPooling2D(3, strides=2, name=f"pool{pool}")(x)
    return keras.Model(inputs, x, name="alexnet_trunk")


@register_model("alexnet", min_input_size=67, preprocessing="tf", head=Head(custom_blocks=True, pooling="flatten"))
def create_alexnet_model(input_shape, num_classes, hyperparams=None):
    """AlexNet with attention and SE blocks, trained from scratch.

    Five convolutions (96 11x11/4, 256 5x5, 384, 384, 256 3x3; max pooling after the 1st, 2nd and 5th), each
    ReLU and BatchNormalization; then the report's head with both CustomLayers, Flatten and Dense 4096 +
    Dropout twice. 47,605,796 parameters at 224x224 and 196 classes. The smallest input is 67x67.

    Args:
        input_shape: ``(height, width, channels)`` of the images.
        num_classes: number of output classes.
        hyperparams: reads ``x_trainable`` (applied to the trunk), ``dropout``, ``spatial_dropout`` and
            ``new_weights``.

    Returns:
        An uncompiled ``keras.Model``.
    """
    hp = merged_hyperparams(hyperparams)
    check_input_shape("alexnet", input_shape, need_rgb=False)
    trunk = _alexnet_trunk(input_shape)
    model, _, _ = finetune_alexnet(
        trunk,
        trunk.layers[-1],
        x_trainable=hp["x_trainable"],
        dropout=hp["dropout"],
        # the report's classic 4096-4096 classifier, or the modern head's fully connected layers
        fc_layers=ALEXNET_FC_LAYERS if hp["head"] == "report" else fc_units(hp["fc_layers"]),
        num_classes=num_classes,
        new_weights=hp["new_weights"],
        spatial_dropout=hp["spatial_dropout"],
        head=hp["head"],
        gates=hp["gates"],
    )
    return model


finetune_alexnet = finetune_for("alexnet", default_fc_layers=ALEXNET_FC_LAYERS)
