"""The eight models of the report, and a registry to build them by name.

Every builder has the conventional signature ``create_<name>_model(input_shape,
num_classes, hyperparams)`` and returns an uncompiled ``keras.Model`` that
takes RGB pixels in 0-255 and carries its base network's own preprocessing
inside it (a parameter-free ``carclf.layers.ImagePreprocessing``, or the
``Rescaling`` + ``Normalization`` that ``keras.applications.EfficientNetB0``
already holds). ``build(name, ...)`` calls them by name; ``NAMES`` lists them
in the report's order.

How the models are put together, following the report (and
``keras.applications``, where ``ResNet50`` is a thin variant of ``ResNet``):

- a *base*: a ``keras.applications`` network without its top (VGG16,
  ResNet50, DenseNet121, EfficientNetB0, InceptionV3; "imagenet" is a second
  ResNet50 with a Flatten head), or a from-scratch convolutional trunk
  (AlexNet, model1), and its *transfer layer*, the layer the head is attached
  to;
- ``finetune_model``: freezes base layers according to ``x_trainable``, adds
  the shared head (``add_classification_head``), optionally loads fine-tuned
  weights (``new_weights``) and returns ``(model, n_layers, n_frozen)``, the
  report's "total number of layers and number of frozen layers for
  verification". Each ``finetune_<name>`` is a thin variant of it;
- ``create_<name>_model`` builds the base, calls ``finetune_<name>`` and
  returns just the model, so that ``build`` and the training pipeline can call
  every builder the same way. ``layer_counts(model)`` gives the same two counts
  for any model afterwards.

The head (spec-notes section 2): ``SpatialDropout2D(spatial_dropout)``,
``AttentionBlock`` (reduction 8), ``SEBlock`` (reduction 16), then for VGG16,
ResNet50, ImageNet, EfficientNetB0 and AlexNet also ``CustomLayer("attention")``
and ``CustomLayer("se")``; then ``Flatten`` (VGG16, DenseNet121, ImageNet,
EfficientNetB0, AlexNet) or ``GlobalAveragePooling2D`` (ResNet50,
InceptionV3); then ``Dense(n, relu)`` + ``Dropout(dropout)`` for each ``n`` of
``fc_layers``; then ``Dense(num_classes, softmax)`` computed in float32 so
that it stays stable under mixed precision.

With the defaults below at 224x224x3 and 196 classes the parameter counts
(total / trainable) are the report's:

============== ========== ==========
model          total      trainable
============== ========== ==========
alexnet        47,605,796 47,603,044
vgg16          27,859,652 27,859,652
resnet50       27,892,036 27,838,916
densenet121    33,224,132 33,140,484
imagenet       78,223,684 78,170,564
efficientnetb0 37,497,671 37,455,648
inceptionv3    24,529,764 24,495,332
============== ========== ==========

``hyperparams`` keys read by the builders (others are ignored):

- ``x_trainable``: which base layers train (see ``set_trainable``);
  ``"all"`` by default.
- ``dropout``: rate of the Dropout after each fully connected layer (0.5).
- ``spatial_dropout``: rate of the head's SpatialDropout2D (0.2).
- ``fc_layers``: units of the head's fully connected layers (``[512]``).
  AlexNet keeps its classic 4096-4096 classifier and model1 has none: neither
  reads this key.
- ``weights``: ``"imagenet"`` (downloaded by ``keras.applications`` and
  cached in ``~/.keras/models``), ``None`` (random initialisation; the default
  here, the full run profile sets ``"imagenet"``) or the path of a local
  weights file for the base (for example a no-top ImageNet ``.h5`` fetched by
  hand). AlexNet and model1 have no pretrained base and ignore it.
- ``new_weights``: path of a weights file of the whole fine-tuned model
  (``.weights.h5`` or ``.keras``, as written by ``model.save_weights`` /
  ``model.save``), loaded after the model is built; ``None`` by default.

Smallest inputs: 16x16 for model1, 67x67 for AlexNet, 75x75 for InceptionV3
and 32x32 for the other five (the ``keras.applications`` minimum). Below that a
``ValueError`` names the minimum. At 32x32 the pretrained bases end in a 1x1
feature map, which is enough for CPU tests but not for real training.
"""

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from carclf.layers import AttentionBlock, CustomLayer, ImagePreprocessing, SEBlock

__all__ = [
    "DEFAULT_HYPERPARAMS",
    "MIN_INPUT_SIZE",
    "NAMES",
    "PretrainedWeightsError",
    "UnknownModelError",
    "add_classification_head",
    "build",
    "check_name",
    "create_alexnet_model",
    "create_densenet121_model",
    "create_efficientnetb0_model",
    "create_imagenet_model",
    "create_inceptionv3_model",
    "create_model1_model",
    "create_resnet50_model",
    "create_vgg16_model",
    "finetune_alexnet",
    "finetune_densenet121",
    "finetune_efficientnetb0",
    "finetune_imagenet",
    "finetune_inceptionv3",
    "finetune_model",
    "finetune_model1",
    "finetune_resnet50",
    "finetune_vgg16",
    "layer_counts",
    "preprocessing_mode",
    "set_trainable",
]

log = logging.getLogger(__name__)

#: The eight models, in the report's order.
NAMES = (
    "model1",
    "alexnet",
    "vgg16",
    "resnet50",
    "densenet121",
    "imagenet",
    "efficientnetb0",
    "inceptionv3",
)

#: What a builder uses for a key missing from ``hyperparams``.
DEFAULT_HYPERPARAMS = {
    "x_trainable": "all",
    "dropout": 0.5,
    "spatial_dropout": 0.2,
    "fc_layers": (512,),
    "weights": None,
    "new_weights": None,
}

#: Smallest height and width each builder accepts.
MIN_INPUT_SIZE = {
    "model1": 16,
    "alexnet": 67,
    "vgg16": 32,
    "resnet50": 32,
    "densenet121": 32,
    "imagenet": 32,
    "efficientnetb0": 32,
    "inceptionv3": 75,
}

#: How many trailing base layers ``x_trainable="partial"`` leaves trainable.
PARTIAL_TRAINABLE_LAYERS = 4


class PretrainedWeightsError(RuntimeError):
    """The ImageNet weights of a base could not be downloaded or loaded."""


# ----------------------------------------------------------------------------
# Pretrained bases


@dataclass(frozen=True)
class _Base:
    """A ``keras.applications`` base: how to build it and what it expects."""

    label: str  # the keras.applications name, for messages
    factory: Callable[..., keras.Model]
    preprocessing: str | None  # ImagePreprocessing mode; None: built into the base
    transfer_layer: str
    weights_file: str  # the no-top ImageNet file keras.applications downloads
    weights_url: str


_KA = "https://storage.googleapis.com/tensorflow/keras-applications/"
_RESNET50 = _Base(
    "ResNet50",
    lambda **kw: keras.applications.ResNet50(**kw),
    "caffe",
    "conv5_block3_out",
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    _KA + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
)
_BASES = {
    "vgg16": _Base(
        "VGG16",
        lambda **kw: keras.applications.VGG16(**kw),
        "caffe",
        "block5_pool",
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KA + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "resnet50": _RESNET50,
    "densenet121": _Base(
        "DenseNet121",
        lambda **kw: keras.applications.DenseNet121(**kw),
        "torch",
        "relu",
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KA + "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "imagenet": _RESNET50,
    "efficientnetb0": _Base(
        "EfficientNetB0",
        lambda **kw: keras.applications.EfficientNetB0(**kw),
        None,
        "top_activation",
        "efficientnetb0_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
    ),
    "inceptionv3": _Base(
        "InceptionV3",
        lambda **kw: keras.applications.InceptionV3(**kw),
        "tf",
        "mixed10",
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KA + "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
}

# keras.applications.efficientnet.IMAGENET_STDDEV_RGB
_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def preprocessing_mode(name):
    """The ``ImagePreprocessing`` mode a model applies to its 0-255 input.

    ``"caffe"`` for VGG16, ResNet50 and ImageNet, ``"torch"`` for DenseNet121,
    ``"tf"`` for InceptionV3 and for the from-scratch AlexNet and model1, and
    ``None`` for EfficientNetB0, whose base rescales and normalises by itself.
    """
    check_name(name)
    if name in _BASES:
        return _BASES[name].preprocessing
    return "tf"


def _keras_cache_dir():
    """Where ``keras.utils.get_file`` keeps downloads (``$KERAS_HOME`` or ``~/.keras``)."""
    try:
        from keras.src.backend.config import keras_home

        return keras_home()
    except Exception:  # a private helper: fall back to its documented rule
        return os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def _download_help(base, err):
    target = os.path.join(_keras_cache_dir(), "models", base.weights_file)
    return (
        f"Could not get the ImageNet weights of {base.label} ({type(err).__name__}: {err}). "
        f"keras.applications downloads them once from {base.weights_url} and keeps them as {target}. "
        f"Without internet access, download that file on another machine and copy it to {target} "
        f"(Keras checks its hash, so use the file as downloaded), then build again with "
        f"weights='imagenet'; or pass the file's path as hyperparams['weights']; or use "
        f"weights=None to start from random weights."
    )


def _check_input_shape(name, input_shape, need_rgb):
    shape = tuple(input_shape)
    if len(shape) != 3 or any(d is None for d in shape):
        raise ValueError(f"{name}: input_shape must be a fixed (height, width, channels), got {input_shape!r}")
    height, width, channels = (int(d) for d in shape)
    minimum = MIN_INPUT_SIZE[name]
    if height < minimum or width < minimum:
        raise ValueError(
            f"{name} needs inputs of at least {minimum}x{minimum} pixels; got {height}x{width}. "
            f"Resize the images to {minimum}x{minimum} or more."
        )
    if need_rgb and channels != 3:
        raise ValueError(f"{name} takes RGB images (3 channels); got input_shape={shape}")
    return height, width, channels


def _fix_efficientnet_stem(base):
    """Make a base loaded from a local ImageNet file normalise like ``weights="imagenet"``.

    The ImageNet file stores the standard deviations as the Normalization
    layer's *variance*; ``keras.applications`` compensates with an extra
    ``Rescaling`` that it adds only for ``weights="imagenet"``. For the same
    file loaded by path we square the stored values instead, which computes
    the same ``(x / 255 - mean) / std`` without an extra layer.
    """
    norm = next((layer for layer in base.layers if isinstance(layer, layers.Normalization)), None)
    if norm is None or getattr(norm, "adapt_variance", None) is None:
        return
    variance = keras.ops.convert_to_numpy(norm.adapt_variance)
    if np.allclose(variance, _IMAGENET_STDDEV_RGB, atol=1e-4):
        norm.adapt_variance.assign(np.square(variance))
        norm.finalize_state()


def _pretrained_base(name, input_shape, weights):
    """Build the ``keras.applications`` base of ``name``, preprocessing included.

    Returns ``(base_model, transfer_layer)``; the base's input is a
    ``keras.Input`` of pixels in 0-255.
    """
    base = _BASES[name]
    _check_input_shape(name, input_shape, need_rgb=True)
    local = weights is not None and weights != "imagenet"
    if local and not os.path.isfile(os.fspath(weights)):
        raise FileNotFoundError(f"{name}: no weights file at {weights!s}")

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if base.preprocessing is not None:
        x = ImagePreprocessing(base.preprocessing, name="preprocessing")(x)
    try:
        model = base.factory(
            include_top=False,
            weights="imagenet" if weights == "imagenet" else None,
            input_tensor=x,
            input_shape=tuple(input_shape),
        )
    except Exception as err:
        if weights == "imagenet":
            raise PretrainedWeightsError(_download_help(base, err)) from err
        raise
    if local:
        model.load_weights(os.fspath(weights))
        if name == "efficientnetb0":
            _fix_efficientnet_stem(model)
    return model, model.get_layer(base.transfer_layer)


# ----------------------------------------------------------------------------
# Shared pieces: freezing, head, fine-tuning


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

    - ``"all"``: every base layer trains, BatchNormalization included (this is
      what the report's trainable-parameter counts assume).
    - ``"none"``: every base layer is frozen.
    - ``"partial"``: all but the last 4 base layers are frozen.
    - an integer ``n`` (or a string of digits): all but the last ``n`` base
      layers are frozen (``0`` is ``"none"``; ``n`` at least the number of
      base layers leaves them all unfrozen).

    BatchNormalization: with any value other than ``"all"`` every
    BatchNormalization layer of the base stays frozen, also in the unfrozen
    tail. In Keras 3 a frozen BatchNormalization runs in inference mode, so it
    keeps the pretrained moving statistics instead of re-estimating them from
    small fine-tuning batches (the advice of the Keras transfer-learning
    guide). The layers still count in ``n``.

    ``base_layers`` are the base's layers in order, input layer excluded.
    Other layers (the head) are left alone.
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
):
    """The head every report model puts on its transfer layer's output.

    ``SpatialDropout2D(spatial_dropout)``, ``AttentionBlock()``, ``SEBlock()``,
    then (``custom_blocks=True``) ``CustomLayer("attention")`` and
    ``CustomLayer("se")``; then ``Flatten`` (``pooling="flatten"``) or
    ``GlobalAveragePooling2D`` (``pooling="avg"``); then ``Dense(n, relu)`` and
    ``Dropout(dropout)`` for each ``n`` in ``fc_layers``; then
    ``Dense(num_classes, softmax, dtype="float32")`` named ``predictions``.

    Args:
        x: a 4D feature map, ``(batch, height, width, channels)``.
        num_classes: number of output classes.
        fc_layers: units of the fully connected layers, in order (may be empty).
        dropout: rate of the Dropout after each fully connected layer.
        spatial_dropout: rate of the SpatialDropout2D.
        custom_blocks: add the two ``CustomLayer`` blocks.
        pooling: ``"flatten"`` or ``"avg"``.

    Returns:
        The class probabilities tensor.
    """
    if pooling not in ("flatten", "avg"):
        raise ValueError(f"pooling must be 'flatten' or 'avg', got {pooling!r}")
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
    for index, units in enumerate(fc_layers, start=1):
        x = layers.Dense(int(units), activation="relu", name=f"head_fc{index}")(x)
        x = layers.Dropout(dropout, name=f"head_dropout{index}")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def _base_layers(base_model, transfer_layer):
    """The base's layers up to and including ``transfer_layer``, input layers excluded."""
    if isinstance(transfer_layer, str):
        transfer_layer = base_model.get_layer(transfer_layer)
    found = []
    for layer in base_model.layers:
        if not isinstance(layer, layers.InputLayer):
            found.append(layer)
        if layer is transfer_layer:
            return transfer_layer, found
    raise ValueError(f"transfer layer {transfer_layer.name!r} is not a layer of {base_model.name!r}")


def _model_input(base_model):
    """The base's input as one tensor (keras.applications keeps a one-element list),
    so that the model is called with a plain array and not a list."""
    inputs = keras.tree.flatten(base_model.inputs)
    return inputs[0] if len(inputs) == 1 else inputs


def _load_new_weights(model, new_weights):
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
    name="model",
):
    """Put the shared head on a base and set which layers train.

    The report's ``finetune_*`` functions, in one: every ``finetune_<name>``
    is this with its model's ``custom_blocks``, ``pooling`` and ``name``.

    Args:
        base_model: the base network (a functional ``keras.Model``).
        transfer_layer: the base layer (or its name) the head is attached to;
            its output is the head's input.
        x_trainable: ``"all"``, ``"none"``, ``"partial"`` or an integer; see
            ``set_trainable``. Applies to the base layers up to the transfer
            layer; the head always trains.
        dropout: rate of the Dropout after each fully connected layer.
        fc_layers: units of the head's fully connected layers.
        num_classes: number of output classes.
        new_weights: optional path of a weights file of the whole fine-tuned
            model (``.weights.h5`` or ``.keras``) to load into it.
        spatial_dropout: rate of the head's SpatialDropout2D.
        custom_blocks: add the head's two ``CustomLayer`` blocks.
        pooling: ``"flatten"`` or ``"avg"`` between the blocks and the dense
            layers.
        name: the model's name.

    Returns:
        ``(model, n_layers, n_frozen)``: the uncompiled model, its number of
        layers and how many of them are frozen.
    """
    transfer_layer, base_layers = _base_layers(base_model, transfer_layer)
    n_frozen = set_trainable(base_layers, x_trainable)
    outputs = add_classification_head(
        transfer_layer.output,
        num_classes,
        fc_layers=fc_layers,
        dropout=dropout,
        spatial_dropout=spatial_dropout,
        custom_blocks=custom_blocks,
        pooling=pooling,
    )
    model = keras.Model(_model_input(base_model), outputs, name=name)
    _load_new_weights(model, new_weights)
    n_layers, n_frozen = layer_counts(model)
    log.info("%s: %d layers, %d frozen (x_trainable=%r)", name, n_layers, n_frozen, x_trainable)
    return model, n_layers, n_frozen


def _hyperparams(hyperparams):
    merged = dict(DEFAULT_HYPERPARAMS)
    merged.update(hyperparams or {})
    return merged


class UnknownModelError(ValueError):
    """A model name that is not one of ``NAMES``."""


def check_name(name):
    """Return ``name`` if it is one of ``NAMES``; else raise :class:`UnknownModelError` listing them."""
    if name not in NAMES:
        import difflib

        close = difflib.get_close_matches(str(name).lower(), NAMES, n=1, cutoff=0.7)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint}; choose one of {', '.join(NAMES)}")
    return name


# ----------------------------------------------------------------------------
# model1


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
    base_model,
    transfer_layer,
    x_trainable="all",
    dropout=0.5,
    fc_layers=(),
    num_classes=196,
    new_weights=None,
):
    """model1's head: ``GlobalAveragePooling2D``, ``Dropout``, ``Dense`` softmax.

    model1 is not one of the report's seven described models and does not use
    the shared attention head. ``fc_layers`` adds optional ``Dense(n, relu)``
    + ``Dropout`` layers before the output (none by default; ``build`` does not
    pass the shared ``fc_layers`` default to model1). Arguments and return
    value as ``finetune_model``.
    """
    transfer_layer, base_layers = _base_layers(base_model, transfer_layer)
    set_trainable(base_layers, x_trainable)
    x = layers.GlobalAveragePooling2D(name="head_avg_pool")(transfer_layer.output)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    for index, units in enumerate(fc_layers, start=1):
        x = layers.Dense(int(units), activation="relu", name=f"head_fc{index}")(x)
        x = layers.Dropout(dropout, name=f"head_fc_dropout{index}")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    model = keras.Model(_model_input(base_model), outputs, name="model1")
    _load_new_weights(model, new_weights)
    n_layers, n_frozen = layer_counts(model)
    return model, n_layers, n_frozen


def create_model1_model(input_shape, num_classes, hyperparams=None):
    """model1: a small CNN trained from scratch, sized for CPU training at 64x64.

    The report names it ("provided by Salim") without describing it; this is
    carclf's design. Layout, for pixels in 0-255:

    - ``ImagePreprocessing("tf")``: scale to [-1, 1];
    - four blocks of ``Conv2D(f, 3x3, same, no bias)``, ``BatchNormalization``,
      ``ReLU``, ``MaxPooling2D(2)`` with f = 32, 64, 128, 256 (64x64 input ->
      4x4x256 feature map);
    - ``GlobalAveragePooling2D``, ``Dropout(dropout)``,
      ``Dense(num_classes, softmax)`` in float32.

    About 0.39M parameters plus 257 per class (about 0.44M for 196 classes).
    Batch normalisation after every convolution and global average pooling
    instead of a large dense layer let it train fast and fit a few hundred
    images without over-fitting at once. The smallest input is 16x16.

    Args:
        input_shape: ``(height, width, channels)`` of the images.
        num_classes: number of output classes.
        hyperparams: reads ``dropout``, ``x_trainable`` (applied to the conv
            trunk) and ``new_weights``; ``fc_layers`` and ``weights`` are not
            used (no pretrained weights exist for it).

    Returns:
        An uncompiled ``keras.Model``.
    """
    hp = _hyperparams(hyperparams)
    _check_input_shape("model1", input_shape, need_rgb=False)
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


# ----------------------------------------------------------------------------
# AlexNet

#: AlexNet's classic classifier; the report's counts use it, not ``fc_layers``.
ALEXNET_FC_LAYERS = (4096, 4096)


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


def finetune_alexnet(
    base_model,
    transfer_layer,
    x_trainable="all",
    dropout=0.5,
    fc_layers=ALEXNET_FC_LAYERS,
    num_classes=196,
    new_weights=None,
    spatial_dropout=0.2,
):
    """AlexNet's head: the shared head with the custom blocks, Flatten and 4096-4096.

    Arguments and return value as ``finetune_model``.
    """
    return finetune_model(
        base_model,
        transfer_layer,
        x_trainable,
        dropout,
        fc_layers,
        num_classes,
        new_weights,
        spatial_dropout=spatial_dropout,
        custom_blocks=True,
        pooling="flatten",
        name="alexnet",
    )


def create_alexnet_model(input_shape, num_classes, hyperparams=None):
    """AlexNet with attention and SE blocks, trained from scratch.

    Conv 96 11x11/4 valid, MaxPool 3/2, Conv 256 5x5, MaxPool 3/2, Conv 384
    3x3, Conv 384 3x3, Conv 256 3x3, MaxPool 3/2 (5x5x256 at 224), each
    convolution ReLU and followed by BatchNormalization; then the shared head
    with SpatialDropout2D, AttentionBlock, SEBlock, two CustomLayers, Flatten,
    Dense 4096 + Dropout twice and the softmax. The input is scaled to
    [-1, 1] inside the model. 47,605,796 parameters at 224x224 and 196
    classes. The smallest input is 67x67.

    Args:
        input_shape: ``(height, width, channels)`` of the images.
        num_classes: number of output classes.
        hyperparams: reads ``x_trainable`` (applied to the convolutional
            trunk), ``dropout``, ``spatial_dropout`` and ``new_weights``.

    Returns:
        An uncompiled ``keras.Model``.
    """
    hp = _hyperparams(hyperparams)
    _check_input_shape("alexnet", input_shape, need_rgb=False)
    trunk = _alexnet_trunk(input_shape)
    model, _, _ = finetune_alexnet(
        trunk,
        trunk.layers[-1],
        x_trainable=hp["x_trainable"],
        dropout=hp["dropout"],
        num_classes=num_classes,
        new_weights=hp["new_weights"],
        spatial_dropout=hp["spatial_dropout"],
    )
    return model


# ----------------------------------------------------------------------------
# The keras.applications bases
#
# Each finetune_<name> is finetune_model with that model's head variant, and
# each create_<name>_model builds the base and calls it, as
# keras.applications.ResNet50 is ResNet with its stack of blocks.


def finetune_vgg16(
    base_model,
    transfer_layer,
    x_trainable="all",
    dropout=0.5,
    fc_layers=(512,),
    num_classes=196,
    new_weights=None,
    spatial_dropout=0.2,
):
    """VGG16's head: the shared head with the two CustomLayers, then Flatten.

    Arguments and return value as ``finetune_model``.
    """
    return finetune_model(
        base_model,
        transfer_layer,
        x_trainable,
        dropout,
        fc_layers,
        num_classes,
        new_weights,
        spatial_dropout=spatial_dropout,
        custom_blocks=True,
        pooling="flatten",
        name="vgg16",
    )


def finetune_resnet50(
    base_model,
    transfer_layer,
    x_trainable="all",
    dropout=0.5,
    fc_layers=(512,),
    num_classes=196,
    new_weights=None,
    spatial_dropout=0.2,
):
    """ResNet50's head: the shared head with the two CustomLayers, then GlobalAveragePooling2D.

    Arguments and return value as ``finetune_model``.
    """
    return finetune_model(
        base_model,
        transfer_layer,
        x_trainable,
        dropout,
        fc_layers,
        num_classes,
        new_weights,
        spatial_dropout=spatial_dropout,
        custom_blocks=True,
        pooling="avg",
        name="resnet50",
    )


def finetune_densenet121(
    base_model,
    transfer_layer,
    x_trainable="all",
    dropout=0.5,
    fc_layers=(512,),
    num_classes=196,
    new_weights=None,
    spatial_dropout=0.2,
):
    """DenseNet121's head: the shared head without CustomLayers, then Flatten.

    Arguments and return value as ``finetune_model``.
    """
    return finetune_model(
        base_model,
        transfer_layer,
        x_trainable,
        dropout,
        fc_layers,
        num_classes,
        new_weights,
        spatial_dropout=spatial_dropout,
        custom_blocks=False,
        pooling="flatten",
        name="densenet121",
    )


def finetune_imagenet(
    base_model,
    transfer_layer,
    x_trainable="all",
    dropout=0.5,
    fc_layers=(512,),
    num_classes=196,
    new_weights=None,
    spatial_dropout=0.2,
):
    """The "ImageNet" model's head: the shared head with the two CustomLayers, then Flatten.

    Arguments and return value as ``finetune_model``.
    """
    return finetune_model(
        base_model,
        transfer_layer,
        x_trainable,
        dropout,
        fc_layers,
        num_classes,
        new_weights,
        spatial_dropout=spatial_dropout,
        custom_blocks=True,
        pooling="flatten",
        name="imagenet",
    )


def finetune_efficientnetb0(
    base_model,
    transfer_layer,
    x_trainable="all",
    dropout=0.5,
    fc_layers=(512,),
    num_classes=196,
    new_weights=None,
    spatial_dropout=0.2,
):
    """EfficientNetB0's head: the shared head with the two CustomLayers, then Flatten.

    Arguments and return value as ``finetune_model``.
    """
    return finetune_model(
        base_model,
        transfer_layer,
        x_trainable,
        dropout,
        fc_layers,
        num_classes,
        new_weights,
        spatial_dropout=spatial_dropout,
        custom_blocks=True,
        pooling="flatten",
        name="efficientnetb0",
    )


def finetune_inceptionv3(
    base_model,
    transfer_layer,
    x_trainable="all",
    dropout=0.5,
    fc_layers=(512,),
    num_classes=196,
    new_weights=None,
    spatial_dropout=0.2,
):
    """InceptionV3's head: the shared head without CustomLayers, then GlobalAveragePooling2D.

    Arguments and return value as ``finetune_model``.
    """
    return finetune_model(
        base_model,
        transfer_layer,
        x_trainable,
        dropout,
        fc_layers,
        num_classes,
        new_weights,
        spatial_dropout=spatial_dropout,
        custom_blocks=False,
        pooling="avg",
        name="inceptionv3",
    )


def _fc_layers(value):
    if value is None:
        return ()
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    return tuple(int(units) for units in value)


def _create_pretrained(name, finetune, input_shape, num_classes, hyperparams):
    hp = _hyperparams(hyperparams)
    base_model, transfer_layer = _pretrained_base(name, input_shape, hp["weights"])
    model, _, _ = finetune(
        base_model,
        transfer_layer,
        x_trainable=hp["x_trainable"],
        dropout=hp["dropout"],
        fc_layers=_fc_layers(hp["fc_layers"]),
        num_classes=num_classes,
        new_weights=hp["new_weights"],
        spatial_dropout=hp["spatial_dropout"],
    )
    return model


def create_vgg16_model(input_shape, num_classes, hyperparams=None):
    """VGG16 with attention and SE blocks, for transfer learning.

    Base: ``keras.applications.VGG16`` without its top, transfer layer
    ``block5_pool``; caffe-style preprocessing inside (RGB to BGR, ImageNet
    means subtracted). Head: ``finetune_vgg16``. 27,859,652 parameters at
    224x224 and 196 classes; smallest input 32x32.

    Args:
        input_shape: ``(height, width, 3)`` of the RGB images, pixels 0-255.
        num_classes: number of output classes.
        hyperparams: reads ``x_trainable``, ``dropout``, ``spatial_dropout``,
            ``fc_layers``, ``weights`` and ``new_weights`` (see the module
            docstring); other keys are ignored.

    Returns:
        An uncompiled ``keras.Model``.
    """
    return _create_pretrained("vgg16", finetune_vgg16, input_shape, num_classes, hyperparams)


def create_resnet50_model(input_shape, num_classes, hyperparams=None):
    """ResNet50 with attention and SE blocks, for transfer learning.

    Base: ``keras.applications.ResNet50`` without its top, transfer layer
    ``conv5_block3_out``; caffe-style preprocessing inside. Head:
    ``finetune_resnet50`` (global average pooling). 27,892,036 parameters at
    224x224 and 196 classes; smallest input 32x32.

    Args and returns as ``create_vgg16_model``.
    """
    return _create_pretrained("resnet50", finetune_resnet50, input_shape, num_classes, hyperparams)


def create_densenet121_model(input_shape, num_classes, hyperparams=None):
    """DenseNet121 with attention and SE blocks, for transfer learning.

    Base: ``keras.applications.DenseNet121`` without its top, transfer layer
    ``relu`` (its last); torch-style preprocessing inside (/255, ImageNet mean
    and standard deviation). Head: ``finetune_densenet121``. 33,224,132
    parameters at 224x224 and 196 classes; smallest input 32x32.

    Args and returns as ``create_vgg16_model``.
    """
    return _create_pretrained("densenet121", finetune_densenet121, input_shape, num_classes, hyperparams)


def create_imagenet_model(input_shape, num_classes, hyperparams=None):
    """The report's "ImageNet" model: ResNet50 with a Flatten head.

    Base: ``keras.applications.ResNet50`` without its top, transfer layer
    ``conv5_block3_out``; caffe-style preprocessing inside. Head:
    ``finetune_imagenet`` (Flatten, hence the 51M-parameter first dense
    layer). 78,223,684 parameters at 224x224 and 196 classes; smallest input
    32x32.

    Args and returns as ``create_vgg16_model``.
    """
    return _create_pretrained("imagenet", finetune_imagenet, input_shape, num_classes, hyperparams)


def create_efficientnetb0_model(input_shape, num_classes, hyperparams=None):
    """EfficientNetB0 with attention and SE blocks, for transfer learning.

    Base: ``keras.applications.EfficientNetB0`` without its top, transfer
    layer ``top_activation``. The base rescales and normalises its 0-255
    input itself (``Rescaling`` + ``Normalization``, whose mean, variance and
    count are 7 of the non-trainable parameters), so nothing is added. Head:
    ``finetune_efficientnetb0``. 37,497,671 parameters at 224x224 and 196
    classes; smallest input 32x32.

    Args and returns as ``create_vgg16_model``.
    """
    return _create_pretrained("efficientnetb0", finetune_efficientnetb0, input_shape, num_classes, hyperparams)


def create_inceptionv3_model(input_shape, num_classes, hyperparams=None):
    """InceptionV3 with attention and SE blocks, for transfer learning.

    Base: ``keras.applications.InceptionV3`` without its top, transfer layer
    ``mixed10``; inputs scaled to [-1, 1] inside. Head:
    ``finetune_inceptionv3`` (global average pooling). 24,529,764 parameters
    at 224x224 and 196 classes. The smallest input is 75x75: below it a
    ``ValueError`` says so.

    Args and returns as ``create_vgg16_model``.
    """
    return _create_pretrained("inceptionv3", finetune_inceptionv3, input_shape, num_classes, hyperparams)


# ----------------------------------------------------------------------------
# Registry

_BUILDERS = {
    "model1": create_model1_model,
    "alexnet": create_alexnet_model,
    "vgg16": create_vgg16_model,
    "resnet50": create_resnet50_model,
    "densenet121": create_densenet121_model,
    "imagenet": create_imagenet_model,
    "efficientnetb0": create_efficientnetb0_model,
    "inceptionv3": create_inceptionv3_model,
}


def build(name, input_shape=(224, 224, 3), num_classes=196, hyperparams=None):
    """Build one of the eight models by name (``NAMES``); returns it uncompiled.

    Args:
        name: one of ``NAMES``.
        input_shape: ``(height, width, channels)``; pixels in 0-255.
        num_classes: number of output classes.
        hyperparams: dict of builder settings (see the module docstring);
            ``None`` means the defaults (``DEFAULT_HYPERPARAMS``).
    """
    check_name(name)
    return _BUILDERS[name](tuple(input_shape), int(num_classes), hyperparams)
