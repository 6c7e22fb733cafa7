"""Deprecated name of configs/custom.py (kept working): the same config, read its docstring.

`configs/custom.py` picks each modality's encoder from the converted dataset (ResNet-18 for
spectrograms and frames, as this file always did; sequence encoders for feature sequences).
"""

import ml_collections

from mlb_jax.config_base import custom_dataset


def get_config() -> ml_collections.ConfigDict:
    """Returns configs/custom.py's config."""
    return custom_dataset()
