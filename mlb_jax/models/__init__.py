"""Model layer: ResNet-18 and sequence encoders, fusion and unimodal heads, the classifier."""

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
from mlb_jax.models.sequence import ConformerEncoder, TemporalConvEncoder

__all__ = [
    "CONV_CHOICES",
    "ENCODERS",
    "FUSIONS",
    "AudioEncoder",
    "ConformerEncoder",
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
    "TemporalConvEncoder",
    "TransformerFusion",
    "VideoEncoder",
    "build_fusion",
    "build_model",
    "resolve_conv",
    "torch_linear",
    "unimodal_heads",
]
