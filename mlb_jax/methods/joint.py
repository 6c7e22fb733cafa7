"""Joint training: one cross-entropy on the fused logits, no balancing (METHODS.md §3.1)."""

from mlb_jax.methods.base import Method


def make_joint(config) -> Method:
    """Builds the joint-training method (no hyper-parameters)."""
    del config
    return Method(name="joint")
