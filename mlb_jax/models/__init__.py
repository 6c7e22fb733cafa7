"""Model layer: ResNet-18 encoders, fusion heads, unimodal heads and the multimodal classifier."""

from mlb_jax.models.conv import CHOICES as CONV_CHOICES
from mlb_jax.models.conv import resolve as resolve_conv
from mlb_jax.models.fusion import (
    FUSIONS,
    FiLMFusion,
    Fusion,
    GatedFusion,
    LateLinearFusion,
    MidMLPFusion,
    TransformerFusion,
    build_fusion,
)
from mlb_jax.models.heads import torch_linear, unimodal_heads
from mlb_jax.models.multimodal import (
    ENCODERS,
    EncoderSpec,
    ModalitySpec,
    ModelOutput,
    MultimodalClassifier,
    build_model,
)
from mlb_jax.models.resnet import AudioEncoder, ResNet18, VideoEncoder

__all__ = [
    "CONV_CHOICES",
    "ENCODERS",
    "FUSIONS",
    "AudioEncoder",
    "EncoderSpec",
    "FiLMFusion",
    "Fusion",
    "GatedFusion",
    "LateLinearFusion",
    "MidMLPFusion",
    "ModalitySpec",  # deprecated alias of EncoderSpec
    "ModelOutput",
    "MultimodalClassifier",
    "ResNet18",
    "TransformerFusion",
    "VideoEncoder",
    "build_fusion",
    "build_model",
    "resolve_conv",
    "torch_linear",
    "unimodal_heads",
]
