"""The eight models of the report, built by name through one registry (docs/models.md).

Every builder has the conventional signature ``create_<name>_model(input_shape, num_classes, hyperparams)``
and returns an uncompiled ``keras.Model`` that takes RGB pixels in 0-255 and carries its base's own
preprocessing. The report's function names are kept as aliases.
"""

# ruff: noqa: I001  (the order of these imports is the registry's: scratch models first, as in the report)
from carclf.models.heads import (
    DEFAULT_HYPERPARAMS,
    PARTIAL_TRAINABLE_LAYERS,
    add_classification_head,
    finetune_for,
    finetune_model,
    layer_counts,
    set_trainable,
)
from carclf.models.registry import (
    UnknownModelError,
    check_name,
    create_model,
    is_builder,
    keeps_pretrained,
    list_models,
    model_spec,
    register_model,
)
from carclf.models.scratch import ALEXNET_FC_LAYERS, create_alexnet_model, create_model1_model, finetune_model1
from carclf.models.pretrained import (
    MissingWeightsFileError,
    PretrainedWeightsError,
    create_densenet121_model,
    create_efficientnetb0_model,
    create_imagenet_model,
    create_inceptionv3_model,
    create_resnet50_model,
    create_vgg16_model,
)

#: The eight models, in the report's order.
NAMES = list_models()

#: Smallest height and width each builder accepts.
MIN_INPUT_SIZE = {name: model_spec(name).min_input_size for name in NAMES}

#: ``create_model`` under its old name.
build = create_model


def preprocessing_mode(name):
    """The ``ImagePreprocessing`` mode a model applies to its 0-255 input (``None``: the base's own)."""
    return model_spec(name).preprocessing


# The report's finetune_<name> functions: the shared head with each model's variant.
finetune_alexnet = finetune_alexnet_model = finetune_for("alexnet", default_fc_layers=ALEXNET_FC_LAYERS)
finetune_vgg16 = finetune_vgg16_model = finetune_for("vgg16")
finetune_resnet50 = finetune_resnet50_model = finetune_for("resnet50")
finetune_densenet121 = finetune_densenet_model = finetune_for("densenet121")
finetune_imagenet = finetune_imagenet_model = finetune_for("imagenet")
finetune_efficientnetb0 = finetune_efficientnet_model = finetune_for("efficientnetb0")
finetune_inceptionv3 = finetune_for("inceptionv3")

# The report's spellings of two builders.
create_densenet_model = create_densenet121_model
create_efficientnet_model = create_efficientnetb0_model

__all__ = [
    "ALEXNET_FC_LAYERS",
    "DEFAULT_HYPERPARAMS",
    "MIN_INPUT_SIZE",
    "NAMES",
    "PARTIAL_TRAINABLE_LAYERS",
    "MissingWeightsFileError",
    "PretrainedWeightsError",
    "UnknownModelError",
    "add_classification_head",
    "build",
    "check_name",
    "create_alexnet_model",
    "create_densenet121_model",
    "create_densenet_model",
    "create_efficientnet_model",
    "create_efficientnetb0_model",
    "create_imagenet_model",
    "create_inceptionv3_model",
    "create_model",
    "create_model1_model",
    "create_resnet50_model",
    "create_vgg16_model",
    "finetune_alexnet",
    "finetune_alexnet_model",
    "finetune_densenet121",
    "finetune_densenet_model",
    "finetune_efficientnet_model",
    "finetune_efficientnetb0",
    "finetune_imagenet",
    "finetune_imagenet_model",
    "finetune_inceptionv3",
    "finetune_model",
    "finetune_model1",
    "finetune_resnet50",
    "finetune_resnet50_model",
    "finetune_vgg16",
    "finetune_vgg16_model",
    "is_builder",
    "layer_counts",
    "keeps_pretrained",
    "list_models",
    "model_spec",
    "preprocessing_mode",
    "register_model",
    "set_trainable",
]
