"""The six ``keras.applications`` bases of the report, with their ImageNet weights or a local file."""

from __future__ import annotations

import os
import re
import warnings

import keras
import numpy as np
from keras import layers

from carclf.layers import ImagePreprocessing
from carclf.models.heads import check_input_shape, fc_units, finetune_for, merged_hyperparams
from carclf.models.registry import Head, Pretrained, model_spec, register_model

_KA = "https://storage.googleapis.com/tensorflow/keras-applications/"

# keras.applications.efficientnet.IMAGENET_STDDEV_RGB
_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


class PretrainedWeightsError(RuntimeError):
    """The ImageNet weights of a base could not be downloaded or loaded."""


class MissingWeightsFileError(PretrainedWeightsError, FileNotFoundError):
    """``weights=<file>`` names no file."""


def _keras_cache_dir():
    """Where ``keras.utils.get_file`` keeps downloads (``$KERAS_HOME`` or ``~/.keras``)."""
    try:
        from keras.src.backend.config import keras_home

        return keras_home()
    except Exception:  # a private helper: fall back to its documented rule
        return os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def _download_help(base: Pretrained, err):
    target = os.path.join(_keras_cache_dir(), "models", base.weights_file)
    return (
        f"Could not get the ImageNet weights of {base.label} ({type(err).__name__}: {err}). "
        f"keras.applications downloads them once from {base.weights_url} and keeps them as {target}. "
        f"Without internet access, download that file on another machine and copy it to {target} "
        f"(Keras checks its hash, so use the file as downloaded), then build again with "
        f"weights='imagenet'; or pass the file's path as hyperparams['weights']; or use "
        f"weights=None to start from random weights."
    )


def _fix_efficientnet_stem(base):
    """Make a base loaded from a local ImageNet file normalise like ``weights="imagenet"``.

    The ImageNet file stores the standard deviations as the Normalization layer's *variance*;
    ``keras.applications`` compensates with an extra ``Rescaling`` only for ``weights="imagenet"``. For the
    same file loaded by path the stored values are squared instead, which computes the same
    ``(x / 255 - mean) / std`` without an extra layer.
    """
    norm = next((layer for layer in base.layers if isinstance(layer, layers.Normalization)), None)
    if norm is None or getattr(norm, "adapt_variance", None) is None:
        return
    variance = keras.ops.convert_to_numpy(norm.adapt_variance)
    if np.allclose(variance, _IMAGENET_STDDEV_RGB, atol=1e-4):
        norm.adapt_variance.assign(np.square(variance))
        norm.finalize_state()


def pretrained_base(name, input_shape, weights):
    """``(base_model, transfer_layer)`` of ``name``, its preprocessing inside; the input takes pixels in 0-255."""
    spec = model_spec(name)
    check_input_shape(name, input_shape, need_rgb=True)
    local = weights is not None and weights != "imagenet"
    if local:
        _check_file(name, weights)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if spec.preprocessing is not None:
        x = ImagePreprocessing(spec.preprocessing, name="preprocessing")(x)
    try:
        model = spec.base.factory(
            include_top=False,
            weights="imagenet" if weights == "imagenet" else None,
            input_tensor=x,
            input_shape=tuple(input_shape),
        )
    except Exception as err:
        if weights == "imagenet":
            raise PretrainedWeightsError(_download_help(spec.base, err)) from err
        raise
    if local:
        load_base_weights(name, model, weights)
        if name == "efficientnetb0":
            _fix_efficientnet_stem(model)
    return model, model.get_layer(spec.transfer_layer)


def _where_from(base: Pretrained) -> str:
    target = os.path.join(_keras_cache_dir(), "models", base.weights_file)
    return f"keras.applications downloads its no-top ImageNet weights from {base.weights_url} into {target}"


def _check_file(name, path) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        base = model_spec(name).base
        raise MissingWeightsFileError(f"{path}: no such weights file for {name} ({base.label}); {_where_from(base)}")
    return path


def load_base_weights(name, base_model, path):
    """Load a local weights file into ``name``'s base: keras.applications' no-top ``.h5`` (the file it
    downloads) or a Keras ``.weights.h5`` saved from the base. A file that does not fit is a
    :class:`PretrainedWeightsError` naming it, the first layer that does not fit, and where the right one is."""
    spec, path = model_spec(name), _check_file(name, path)
    mismatch = _legacy_mismatch(base_model, path) if not path.endswith(".weights.h5") else None
    if mismatch is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Keras warns per layer before it raises
                base_model.load_weights(path)
        except Exception as exc:
            mismatch = _keras_mismatch(exc)
    if mismatch:
        raise PretrainedWeightsError(
            f"{path} does not fit the {spec.base.label} base of {name}: {mismatch}; {_where_from(spec.base)}"
        )


def _legacy_mismatch(model, path) -> str | None:
    """The first layer of ``model`` the legacy (keras.applications) ``.h5`` file at ``path`` does not fit."""
    import h5py

    with h5py.File(path, "r") as f:
        group = f.get("model_weights", f)
        if "layer_names" not in group.attrs:
            return "it is not a Keras weights file (no layer_names)"
        saved = []
        for layer in group.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in group[layer].attrs["weight_names"]]
            if names:
                saved.append((layer, [tuple(group[layer][n].shape) for n in names]))
    expected = [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in model.layers if layer.weights]
    for (want, want_shapes), (have, have_shapes) in zip(expected, saved):
        if want_shapes != have_shapes:
            return f"layer {want!r} has weights of shapes {want_shapes}, the file's layer {have!r} {have_shapes}"
    if len(expected) != len(saved):
        return f"the base has {len(expected)} layers with weights, the file {len(saved)}"
    return None


def _keras_mismatch(exc) -> str:
    text = str(exc)
    layer = re.search(r"name=([\w/.-]+)", text)
    shapes = re.search(r"variable\.shape=(\([^)]*\)).*?value\.shape=(\([^)]*\))", text, re.S)
    if layer and shapes:
        return f"layer {layer.group(1)!r} has a weight of shape {shapes.group(1)}, the file {shapes.group(2)}"
    return text.splitlines()[0] if text else type(exc).__name__


def create_pretrained(name, input_shape, num_classes, hyperparams=None):
    """The base of ``name`` with the report's head on its transfer layer (what every builder below does)."""
    hp = merged_hyperparams(hyperparams)
    base_model, transfer_layer = pretrained_base(name, input_shape, hp["weights"])
    model, _, _ = finetune_for(name)(
        base_model,
        transfer_layer,
        x_trainable=hp["x_trainable"],
        dropout=hp["dropout"],
        fc_layers=fc_units(hp["fc_layers"]),
        num_classes=num_classes,
        new_weights=hp["new_weights"],
        spatial_dropout=hp["spatial_dropout"],
        head=hp["head"],
        gates=hp["gates"],
    )
    return model


@register_model(
    "vgg16",
    min_input_size=32,
    preprocessing="caffe",
    transfer_layer="block5_pool",
    head=Head(custom_blocks=True, pooling="flatten"),
    base=Pretrained(
        "VGG16",
        keras.applications.VGG16,
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KA + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
)
def create_vgg16_model(input_shape, num_classes, hyperparams=None):
    """VGG16 with attention and SE blocks, for transfer learning.

    Base: ``keras.applications.VGG16`` without its top, transfer layer ``block5_pool``; caffe-style
    preprocessing inside (RGB to BGR, ImageNet means subtracted). Head: both CustomLayers, then Flatten.
    27,859,652 parameters at 224x224 and 196 classes; smallest input 32x32.

    Args:
        input_shape: ``(height, width, 3)`` of the RGB images, pixels 0-255.
        num_classes: number of output classes.
        hyperparams: reads ``x_trainable``, ``dropout``, ``spatial_dropout``, ``fc_layers``, ``weights``
            (``"imagenet"``, ``None`` or a local file) and ``new_weights``; other keys are ignored.

    Returns:
        An uncompiled ``keras.Model``.
    """
    return create_pretrained("vgg16", input_shape, num_classes, hyperparams)


_RESNET50 = Pretrained(
    "ResNet50",
    keras.applications.ResNet50,
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    _KA + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
)


@register_model(
    "resnet50",
    min_input_size=32,
    preprocessing="caffe",
    transfer_layer="conv5_block3_out",
    head=Head(custom_blocks=True, pooling="avg"),
    base=_RESNET50,
)
def create_resnet50_model(input_shape, num_classes, hyperparams=None):
    """ResNet50 with attention and SE blocks, for transfer learning.

    Base: ``keras.applications.ResNet50`` without its top, transfer layer ``conv5_block3_out``; caffe-style
    preprocessing inside. Head: both CustomLayers, then global average pooling. 27,892,036 parameters at
    224x224 and 196 classes; smallest input 32x32. Arguments and return value as :func:`create_vgg16_model`.
    """
    return create_pretrained("resnet50", input_shape, num_classes, hyperparams)


@register_model(
    "densenet121",
    min_input_size=32,
    preprocessing="torch",
    transfer_layer="relu",
    head=Head(custom_blocks=False, pooling="flatten"),
    base=Pretrained(
        "DenseNet121",
        keras.applications.DenseNet121,
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KA + "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
)
def create_densenet121_model(input_shape, num_classes, hyperparams=None):
    """DenseNet121 with attention and SE blocks, for transfer learning.

    Base: ``keras.applications.DenseNet121`` without its top, transfer layer ``relu`` (its last);
    torch-style preprocessing inside (/255, ImageNet mean and standard deviation). Head: no CustomLayers,
    Flatten. 33,224,132 parameters at 224x224 and 196 classes; smallest input 32x32. Arguments and return
    value as :func:`create_vgg16_model`.
    """
    return create_pretrained("densenet121", input_shape, num_classes, hyperparams)


@register_model(
    "imagenet",
    min_input_size=32,
    preprocessing="caffe",
    transfer_layer="conv5_block3_out",
    head=Head(custom_blocks=True, pooling="flatten"),
    base=_RESNET50,
)
def create_imagenet_model(input_shape, num_classes, hyperparams=None):
    """The report's "ImageNet" model: ResNet50 with a Flatten head.

    Base: ``keras.applications.ResNet50`` without its top, transfer layer ``conv5_block3_out``; caffe-style
    preprocessing inside. Head: both CustomLayers, then Flatten (hence the 51M-parameter first dense layer).
    78,223,684 parameters at 224x224 and 196 classes; smallest input 32x32. Arguments and return value as
    :func:`create_vgg16_model`.
    """
    return create_pretrained("imagenet", input_shape, num_classes, hyperparams)


@register_model(
    "efficientnetb0",
    min_input_size=32,
    preprocessing=None,  # the base rescales and normalises its 0-255 input itself
    transfer_layer="top_activation",
    head=Head(custom_blocks=True, pooling="flatten"),
    base=Pretrained(
        "EfficientNetB0",
        keras.applications.EfficientNetB0,
        "efficientnetb0_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
    ),
)
def create_efficientnetb0_model(input_shape, num_classes, hyperparams=None):
    """EfficientNetB0 with attention and SE blocks, for transfer learning.

    Base: ``keras.applications.EfficientNetB0`` without its top, transfer layer ``top_activation``; the
    base holds its own ``Rescaling`` and ``Normalization``. Head: both CustomLayers, then Flatten.
    37,497,671 parameters at 224x224 and 196 classes; smallest input 32x32. Arguments and return value as
    :func:`create_vgg16_model`.
    """
    return create_pretrained("efficientnetb0", input_shape, num_classes, hyperparams)


@register_model(
    "inceptionv3",
    min_input_size=75,
    preprocessing="tf",
    transfer_layer="mixed10",
    head=Head(custom_blocks=False, pooling="avg"),
    base=Pretrained(
        "InceptionV3",
        keras.applications.InceptionV3,
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KA + "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
)
def create_inceptionv3_model(input_shape, num_classes, hyperparams=None):
    """InceptionV3 with attention and SE blocks, for transfer learning.

    Base: ``keras.applications.InceptionV3`` without its top, transfer layer ``mixed10``; inputs scaled to
    [-1, 1] inside. Head: no CustomLayers, global average pooling. 24,529,764 parameters at 224x224 and 196
    classes; the smallest input is 75x75. Arguments and return value as :func:`create_vgg16_model`.
    """
    return create_pretrained("inceptionv3", input_shape, num_classes, hyperparams)
