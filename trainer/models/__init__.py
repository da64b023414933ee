"""Model families for tiny-imagenet-200 and the registry that builds them.

Importing this package registers every family. Use::

    from trainer import models

    model = models.build_model("minception", num_classes=200)
    defaults = models.get_defaults("minception")
"""

from contracts.model import MAIN_OUTPUT, main_output_model
from trainer.models import inception_resnet_v2, inception_v1, minception
from trainer.models.inception_resnet_v2 import backbone_layers, backbone_model, set_backbone_trainable
from trainer.models.registry import (
    ArchDefaults,
    WeightsUnavailableError,
    build_model,
    get_defaults,
    list_models,
    register_model,
)

__all__ = [
    "MAIN_OUTPUT",
    "ArchDefaults",
    "WeightsUnavailableError",
    "backbone_layers",
    "backbone_model",
    "build_model",
    "get_defaults",
    "inception_resnet_v2",
    "inception_v1",
    "list_models",
    "main_output_model",
    "minception",
    "register_model",
    "set_backbone_trainable",
]
