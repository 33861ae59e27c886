"""The report's custom layers, written with ``keras.ops`` only.

``SEBlock``, ``AttentionBlock`` and ``CustomLayer`` are the blocks the report
adds on top of every base network ("Custom Layer", "SE Block", "Attention
Block Layer"); ``ImagePreprocessing`` is the parameter-free layer that carries
a base network's own input preprocessing inside the model, so every model in
``carclf.models`` takes RGB pixels in 0-255.

All four are registered with ``keras.saving.register_keras_serializable``
under the package ``"carclf"``: a ``.keras`` file holding them loads back with
``keras.saving.load_model(path)`` and no ``custom_objects``, provided this
module has been imported (``import carclf.layers`` or ``import carclf.models``)
before the load. None of them uses a backend-specific call, so they run on the
TensorFlow and JAX backends alike, and each follows the layer's dtype policy,
so they compute in float16 under ``mixed_float16`` while keeping float32
variables.

The blocks expect ``channels_last`` feature maps of rank 4, ``(batch, height,
width, channels)``, and return a tensor of the same shape.
"""

import keras
from keras import layers, ops

__all__ = ["AttentionBlock", "CustomLayer", "ImagePreprocessing", "SEBlock"]

PACKAGE = "carclf"


class _ChannelGate(layers.Layer):
    """Squeeze, excite, rescale: the computation both report blocks share.

    Global average pooling gives one value per channel; ``Dense(C // reduction,
    relu)`` then ``Dense(C, sigmoid)`` turn that into one weight per channel in
    (0, 1); the weights are reshaped to ``1 x 1 x C`` and multiply the input.
    With ``C`` input channels the block holds ``2 * C * (C // reduction) +
    C // reduction + C`` parameters (biases on), all trainable.
    """

    default_reduction = 16

    def __init__(self, reduction=None, **kwargs):
        super().__init__(**kwargs)
        reduction = self.default_reduction if reduction is None else reduction
        if isinstance(reduction, bool) or int(reduction) != reduction or reduction < 1:
            raise ValueError(f"{type(self).__name__}: `reduction` must be a positive integer, got {reduction!r}")
        self.reduction = int(reduction)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} expects (batch, height, width, channels) feature maps, "
                f"got shape {tuple(input_shape)}"
            )
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{type(self).__name__} needs a known channel count, got {tuple(input_shape)}")
        units = max(1, channels // self.reduction)
        policy = self.dtype_policy
        # Squeeze: one summary value per channel.
        self.squeeze = layers.GlobalAveragePooling2D(dtype=policy, name="squeeze")
        # Excitation: bottleneck then expansion back to one weight per channel.
        self.reduce = layers.Dense(units, activation="relu", dtype=policy, name="reduce")
        self.expand = layers.Dense(channels, activation="sigmoid", dtype=policy, name="expand")
        # Reshape the weights so they broadcast over height and width.
        self.reshape = layers.Reshape((1, 1, channels), dtype=policy, name="reshape")
        self.squeeze.build(input_shape)
        self.reduce.build((input_shape[0], channels))
        self.expand.build((input_shape[0], units))
        self.reshape.build((input_shape[0], channels))

    def call(self, inputs):
        weights = self.squeeze(inputs)
        weights = self.reduce(weights)
        weights = self.expand(weights)
        weights = self.reshape(weights)
        return ops.multiply(inputs, ops.cast(weights, inputs.dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"reduction": self.reduction})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SEBlock(_ChannelGate):
    """Squeeze-and-Excitation block (report: "SE Block").

    Squeeze: global average pooling summarises each channel. Excitation: a
    first ``Dense`` reduces the channel count by ``reduction`` (ReLU), a second
    restores it (sigmoid), giving channel-wise importance weights. Those are
    reshaped to ``1 x 1 x C`` and multiply the input, recalibrating its
    channels. Output shape equals input shape.

    Args:
        reduction: channel reduction of the first dense layer; the bottleneck
            has ``max(1, C // reduction)`` units. Defaults to 16.
        **kwargs: base ``Layer`` arguments (``name``, ``dtype``, ...).
    """

    default_reduction = 16

    def __init__(self, reduction=16, **kwargs):
        super().__init__(reduction=reduction, **kwargs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionBlock(_ChannelGate):
    """Channel attention block (report: "Attention Block Layer").

    Global average pooling makes one summary per channel; a bottleneck
    ``Dense(C // reduction, relu)`` and an expansion ``Dense(C, sigmoid)``
    compute attention weights, which are reshaped to ``1 x 1 x C`` and
    multiply the input so that more weight goes to the informative feature
    maps. The computation is the SE block's with a milder reduction (8), which
    is what reproduces the report's parameter counts. Output shape equals input
    shape.

    Args:
        reduction: channel reduction of the bottleneck. Defaults to 8.
        **kwargs: base ``Layer`` arguments.
    """

    default_reduction = 8

    def __init__(self, reduction=8, **kwargs):
        super().__init__(reduction=reduction, **kwargs)


_BLOCK_TYPES = {"attention": AttentionBlock, "se": SEBlock}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CustomLayer(layers.Layer):
    """The report's "Custom Layer": one attention or SE block of a chosen type.

    It gives the head a configurable slot: ``CustomLayer("attention")`` adds an
    ``AttentionBlock``, ``CustomLayer("se")`` an ``SEBlock``. Its weights are
    exactly the wrapped block's.

    Args:
        block_type: ``"attention"`` or ``"se"``.
        reduction: passed to the block; ``None`` keeps the block's default
            (8 for attention, 16 for SE).
        **kwargs: base ``Layer`` arguments.
    """

    def __init__(self, block_type="attention", reduction=None, **kwargs):
        super().__init__(**kwargs)
        key = str(block_type).lower()
        if key not in _BLOCK_TYPES:
            raise ValueError(f"CustomLayer: block_type must be one of {sorted(_BLOCK_TYPES)}, got {block_type!r}")
        self.block_type = key
        block_class = _BLOCK_TYPES[key]
        self.block = block_class(
            reduction=reduction if reduction is not None else block_class.default_reduction,
            dtype=self.dtype_policy,
            name=f"{key}_block",
        )
        self.reduction = self.block.reduction

    def build(self, input_shape):
        self.block.build(input_shape)

    def call(self, inputs):
        return self.block(inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"block_type": self.block_type, "reduction": self.reduction})
        return config


# The constants of keras.applications.imagenet_utils.preprocess_input.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImagePreprocessing(layers.Layer):
    """A base network's ImageNet input preprocessing, as a layer (no weights).

    Takes RGB pixels in 0-255 (any numeric dtype) and computes what
    ``keras.applications.<module>.preprocess_input`` computes:

    - ``"caffe"`` (VGG16, ResNet50): RGB to BGR, then subtract the ImageNet
      BGR means; no scaling.
    - ``"torch"`` (DenseNet121): divide by 255, subtract the ImageNet RGB
      means, divide by the RGB standard deviations.
    - ``"tf"`` (InceptionV3): scale to [-1, 1] (``x / 127.5 - 1``).

    Inputs are ``channels_last`` with 3 channels for ``"caffe"`` and
    ``"torch"``; ``"tf"`` accepts any channel count.

    Args:
        mode: ``"caffe"``, ``"torch"`` or ``"tf"``.
        **kwargs: base ``Layer`` arguments.
    """

    MODES = ("caffe", "torch", "tf")

    def __init__(self, mode="caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"ImagePreprocessing: mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode

    def build(self, input_shape):
        if self.mode != "tf" and input_shape[-1] != 3:
            raise ValueError(
                f"ImagePreprocessing(mode={self.mode!r}) expects RGB inputs with 3 channels, "
                f"got shape {tuple(input_shape)}"
            )

    def call(self, inputs):
        dtype = self.compute_dtype
        x = ops.cast(inputs, dtype)
        if self.mode == "tf":
            return ops.subtract(ops.divide(x, ops.cast(127.5, dtype)), ops.cast(1.0, dtype))
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return ops.subtract(x, ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype=dtype))
        x = ops.divide(x, ops.cast(255.0, dtype))
        x = ops.subtract(x, ops.convert_to_tensor(_TORCH_MEAN, dtype=dtype))
        return ops.divide(x, ops.convert_to_tensor(_TORCH_STD, dtype=dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config
