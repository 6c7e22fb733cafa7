"""Training methods, one file each, behind one registry (DESIGN decision 4)."""

from collections.abc import Callable

from mlb_jax.methods.agm import make_agm
from mlb_jax.methods.base import Method, cross_entropy
from mlb_jax.methods.joint import make_joint
from mlb_jax.methods.mlb import MLB, make_mlb
from mlb_jax.methods.mmcosine import make_mmcosine
from mlb_jax.methods.mmpareto import make_mmpareto
from mlb_jax.methods.mslr import make_mslr
from mlb_jax.methods.multiloss import MultiLoss, make_multiloss
from mlb_jax.methods.ogm import make_ogm, make_ogm_ge
from mlb_jax.methods.pmr import make_pmr
from mlb_jax.methods.reconboost import make_reconboost

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
}


def make_method(config) -> Method:
    """Builds the method named by `config.name` from the `config.method` block.

    Raises:
      ValueError: for an unknown method name (the message lists the known ones).
    """
    if config.name not in METHODS:
        raise ValueError(
            f"unknown method {config.name!r} (config.method.name); choose one of {sorted(METHODS)}"
        )
    return METHODS[config.name](config)


__all__ = ["METHODS", "MLB", "Method", "MultiLoss", "cross_entropy", "make_method"]
