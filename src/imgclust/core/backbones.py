"""The Keras backbones imgclust can embed images with, and their input sizes.

A plain table with no Keras or scikit-learn import, so parameter checks can read it for free.
"""

from __future__ import annotations

from imgclust.errors import ParamError, did_you_mean

# name -> (keras.applications constructor, keras.applications preprocess module, default (h, w))
BACKBONES: dict[str, tuple[str, str, tuple[int, int]]] = {
    "mobilenet": ("MobileNet", "mobilenet", (224, 224)),
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2", (224, 224)),
    "resnet50": ("ResNet50", "resnet50", (224, 224)),
    "efficientnet_b0": ("EfficientNetB0", "efficientnet", (224, 224)),
    "vgg16": ("VGG16", "vgg16", (224, 224)),
    "inception_v3": ("InceptionV3", "inception_v3", (299, 299)),
    "densenet121": ("DenseNet121", "densenet", (224, 224)),
}
ALPHA_BACKBONES = frozenset({"mobilenet", "mobilenet_v2"})
# smallest input side Keras accepts for a headless model
MIN_INPUT_SIZE = {"inception_v3": 75}
DEFAULT_MIN_INPUT_SIZE = 32
# avg and max are Keras's own pooling layers; gem (generalised mean, p=3) is computed by imgclust
# from the unpooled feature maps (core/cnn.py, ``pool_maps``)
POOLINGS = ("avg", "max", "gem", None)


def check_backbone(backbone: str) -> tuple[str, str, tuple[int, int]]:
    """The BACKBONES entry of ``backbone``; ParamError with a did-you-mean otherwise."""
    try:
        return BACKBONES[backbone]
    except (KeyError, TypeError):
        raise ParamError(
            f"unknown CNN backbone {backbone!r}; use one of {', '.join(BACKBONES)}.{did_you_mean(backbone, BACKBONES)}"
        ) from None


def backbone_label(backbone: str, alpha: float = 1.0) -> str:
    """``mobilenet(alpha=0.25)`` for backbones with a width multiplier, else the backbone name."""
    return f"{backbone}(alpha={float(alpha):g})" if backbone in ALPHA_BACKBONES else str(backbone)
