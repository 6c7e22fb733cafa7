"""What OGM, OGM-GE and MSLR share: fusion-split logits of the late-linear fusion, and labels.

The late-linear fusion computes z = sum_m W_m x_m + b; its fusion-split logits
u_m = W_m x_m + b/M (which sum to z) score each modality on its own. `split_forward` adds
them to the model's output, `late_linear_fusion` / `check_late_linear_params` refuse other
fusion heads with one clear line, and `encoder_labels` names the parameters these methods
scale (a per-leaf modality labels pytree for `mlb_jax.balancing.scale_by_modality`).
"""

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import numpy as np

from mlb_jax.balancing import modality_labels, parameter_paths
from mlb_jax.models.fusion import LateLinearFusion

PyTree = Any
SCOPES = ("conv", "encoder")


class SplitOutput(NamedTuple):
    """`ModelOutput` plus the fusion-split logits (a pytree, so it passes through `jax.jit`).

    Attributes:
      logits: fused logits [B, K].
      unimodal_logits: modality -> unimodal-head logits [B, K].
      features: modality -> pooled encoder feature [B, D_m].
      split_logits: modality -> fusion-split logits u_m = W_m x_m + b/M [B, K]; they sum to
        `logits`.
    """

    logits: jax.Array
    unimodal_logits: dict[str, jax.Array]
    features: dict[str, jax.Array]
    split_logits: dict[str, jax.Array]


def late_linear_fusion(model: Any, method_name: str) -> LateLinearFusion:
    """The model's fusion head, checked to be the late-linear one that has split logits.

    Raises:
      ValueError: naming the method and the config field, for any other fusion.
    """
    fusion = getattr(model, "fusion", None)
    if not isinstance(fusion, LateLinearFusion):
        raise ValueError(
            f"method {method_name!r} scores modalities with the fusion-split logits "
            "u_m = W_m x_m + b/M, which only the late-linear fusion has: set "
            f"config.model.fusion='late_linear' (got {type(fusion).__name__})"
        )
    return fusion


def split_forward(
    model: Any, inputs: Mapping[str, jax.Array], *, train: bool, method_name: str
) -> SplitOutput:
    """The model's forward pass plus its fusion-split logits.

    Args:
      model: a `MultimodalClassifier` with late-linear fusion.
      inputs: modality -> batch.
      train: train mode (batch statistics, dropout) or eval mode.
      method_name: named in the error for a wrong fusion.

    Returns:
      `SplitOutput`; `split_logits` {m: [B, K]}.
    """
    fusion = late_linear_fusion(model, method_name)
    outputs = model(inputs, train=train)
    return SplitOutput(*outputs, split_logits=fusion.split_logits(outputs.features))


def check_late_linear_params(params: PyTree, modalities: Sequence[str], method_name: str) -> None:
    """Fails at set-up (before any step is traced) when the params lack a late-linear fusion.

    Raises:
      ValueError: naming the method and `config.model.fusion`.
    """
    paths = set(parameter_paths(params))
    wanted = {f"fusion/linear/{m}/kernel" for m in modalities} | {"fusion/bias"}
    if not wanted <= paths:
        raise ValueError(
            f"method {method_name!r} needs the fusion-split logits u_m = W_m x_m + b/M of the "
            "late-linear fusion: set config.model.fusion='late_linear' (the model has no "
            f"{sorted(wanted - paths)})"
        )


def encoder_labels(
    params: PyTree, modalities: Sequence[str], *, scope: Literal["conv", "encoder"]
) -> PyTree:
    """Per-leaf modality labels of the parameters a scaling method modulates.

    Args:
      params: the model's parameter pytree (paths 'encoders/<m>/...', 'heads/<m>/...').
      modalities: modality names.
      scope: 'conv': convolution kernels under 'encoders/<m>/': 4-D leaves (the official OGM
        rule "gradient is 4-D", the ResNets' 2-D convolutions) and 3-D ones (the 1-D
        convolutions of the sequence encoders; no other parameter has 3 or more axes);
        'encoder': every leaf under 'encoders/<m>/' or 'heads/<m>/'
        (MLB's `enc_m`, which holds the unimodal head too). The fusion is never included.

    Returns:
      Pytree with the structure of `params`: the owning modality's name, or None (unscaled).

    Raises:
      ValueError: an unknown scope, or a modality that selects no parameter.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {list(SCOPES)}, got {scope!r}")
    patterns = {m: [f"^encoders/{re.escape(m)}/", f"^heads/{re.escape(m)}/"] for m in modalities}
    if scope == "encoder":
        return modality_labels(params, patterns)
    treedef = jax.tree.structure(params)
    labels = treedef.flatten_up_to(modality_labels(params, {m: p[0] for m, p in patterns.items()}))
    labels = [
        label if np.ndim(x) >= 3 else None
        for label, x in zip(labels, treedef.flatten_up_to(params))
    ]
    for m in modalities:
        if m not in labels:
            raise ValueError(
                f"scope 'conv': the encoder of modality {m!r} has no convolution kernel (3-D "
                "or 4-D parameter); use scope 'encoder'"
            )
    return treedef.unflatten(labels)
