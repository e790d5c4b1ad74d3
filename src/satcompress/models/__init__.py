"""Model registry: build classifiers by name, load and save their weights safely.

Registered names (see :func:`list_models`): torchvision ``resnet18``, ``mobilenet_v2``
(``width_mult``), ``efficientnet_v2_s``; the ``resnet9`` student; timm ViTs
``vit_{tiny,small,base}_patch16`` (``img_size``, ``patch_size``, ``dynamic_img_size``);
``clip_vit_b32`` (open_clip); tiny ``test_cnn``, ``test_resnet``, ``test_mobilenet``,
``test_vit`` for tests.
Any timm model is also available as ``timm/<timm name>``, e.g. ``create_model("timm/resnet10t",
10)``; those names are not listed by :func:`list_models`.

Example:
    >>> model = create_model("resnet18", num_classes=10, weights="resnet18.safetensors")
"""

# Family modules register their builders on import.
from satcompress.models import clip, resnet9, testing, timm_models, torchvision_models, vit
from satcompress.models.registry import (
    CLIP_MEAN_STD,
    IMAGENET_MEAN_STD,
    ModelInfo,
    UnknownModelError,
    create_model,
    list_models,
    model_info,
    register_model,
)
from satcompress.models.weights import (
    ClassCountError,
    WeightsError,
    classifier_name,
    load_backbone,
    load_weights,
    save_weights,
)

__all__ = [
    "CLIP_MEAN_STD",
    "IMAGENET_MEAN_STD",
    "ClassCountError",
    "ModelInfo",
    "UnknownModelError",
    "WeightsError",
    "classifier_name",
    "create_model",
    "list_models",
    "load_backbone",
    "load_weights",
    "model_info",
    "register_model",
    "save_weights",
]

del clip, resnet9, testing, timm_models, torchvision_models, vit
