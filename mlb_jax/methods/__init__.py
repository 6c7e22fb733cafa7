"""Training methods, one file each, behind one registry.

A method is a small object and the train step is generic: every method plugs in through the
`Method` interface (mlb_jax/methods/base.py) and is built from `config.method` by one reader
(mlb_jax/methods/config.py).
"""

from collections.abc import Callable
from typing import Any

from mlb_jax.methods.agm import AGM, make_agm
from mlb_jax.methods.base import EpochContext, Method, cross_entropy
from mlb_jax.methods.config import default_block, method_from_config
from mlb_jax.methods.ensemble import Ensemble, make_ensemble
from mlb_jax.methods.joint import make_joint
from mlb_jax.methods.mlb import MLB, make_mlb
from mlb_jax.methods.mmcosine import MMCosine, make_mmcosine
from mlb_jax.methods.mmpareto import MMPareto, make_mmpareto
from mlb_jax.methods.mslr import MSLR, make_mslr
from mlb_jax.methods.multiloss import MultiLoss, make_multiloss
from mlb_jax.methods.ogm import OGM, make_ogm, make_ogm_ge
from mlb_jax.methods.pmr import PMR, make_pmr
from mlb_jax.methods.pretrained import PretrainedFusion, make_pre_finetuned, make_pre_frozen
from mlb_jax.methods.reconboost import ReconBoost, make_reconboost
from mlb_jax.methods.unimodal import Unimodal, make_unimodal

METHODS: dict[str, Callable[..., Method]] = {
    "joint": make_joint,
    "multiloss": make_multiloss,
    "mlb": make_mlb,
    "ogm": make_ogm,
    "ogm_ge": make_ogm_ge,
    "mslr": make_mslr,
    "mmpareto": make_mmpareto,
    "agm": make_agm,
    "pmr": make_pmr,
    "mmcosine": make_mmcosine,
    "reconboost": make_reconboost,
    # The paper's reference rows: built on (or being) one-modality runs.
    "unimodal": make_unimodal,
    "ensemble": make_ensemble,
    "pre_frozen": make_pre_frozen,
    "pre_finetuned": make_pre_finetuned,
}

# Methods built on finished `unimodal` runs -> the block whose `workdirs` (modality -> run
# directory) names them; the compare runner trains those runs first and fills it in.
BUILT_ON_UNIMODAL: dict[str, str] = {
    "ensemble": "ensemble",
    "pre_frozen": "pretrained",
    "pre_finetuned": "pretrained",
}

# config.method.<block> -> the method class whose settings it holds (OGM's serves ogm_ge too).
BLOCKS: dict[str, type[Method]] = {
    cls.config_block: cls
    for cls in (OGM, MSLR, MMPareto, AGM, PMR, MMCosine, ReconBoost, Ensemble, PretrainedFusion)
}


def make_method(config: Any) -> Method:
    """Builds the method named by `config.name` from the `config.method` block.

    Raises:
      ValueError: for an unknown method name (the message lists the known ones), or any
        setting `method_from_config` refuses (named by its config path).
    """
    if config.name not in METHODS:
        raise ValueError(
            f"unknown method {config.name!r} (config.method.name); choose one of {sorted(METHODS)}"
        )
    return METHODS[config.name](config)


__all__ = [
    "AGM",
    "BLOCKS",
    "BUILT_ON_UNIMODAL",
    "METHODS",
    "MLB",
    "MSLR",
    "OGM",
    "PMR",
    "Ensemble",
    "EpochContext",
    "MMCosine",
    "MMPareto",
    "Method",
    "MultiLoss",
    "PretrainedFusion",
    "ReconBoost",
    "Unimodal",
    "cross_entropy",
    "default_block",
    "make_method",
    "method_from_config",
]
