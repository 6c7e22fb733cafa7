"""Model layer: ResNet-18 encoders, fusion heads, unimodal heads and the multimodal classifier."""

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
    ModalitySpec,
    ModelOutput,
    MultimodalClassifier,
    build_model,
)
from mlb_jax.models.resnet import AudioEncoder, ResNet18, VideoEncoder

__all__ = [
    "ENCODERS",
    "FUSIONS",
    "AudioEncoder",
    "FiLMFusion",
    "Fusion",
    "GatedFusion",
    "LateLinearFusion",
    "MidMLPFusion",
    "ModalitySpec",
    "ModelOutput",
    "MultimodalClassifier",
    "ResNet18",
    "TransformerFusion",
    "VideoEncoder",
    "build_fusion",
    "build_model",
    "torch_linear",
    "unimodal_heads",
]
