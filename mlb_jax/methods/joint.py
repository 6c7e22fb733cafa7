"""Joint training: one cross-entropy on the fused logits, no balancing.

See docs/METHODS.md (joint-and-multiloss).
"""

from typing import Any

from mlb_jax.methods.base import Method
from mlb_jax.methods.config import method_from_config


def make_joint(config: Any) -> Method:
    """Builds joint training from `config.method` (no settings of its own)."""
    return method_from_config(Method, config, name="joint")
