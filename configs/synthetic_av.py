"""The demo: MLB on the embedded synthetic audio-video dataset, small enough for a 2-core CPU.

    python -m mlb_jax.train --config=configs/synthetic_av.py --workdir=runs/demo
    python -m mlb_jax.train --config=configs/synthetic_av.py --workdir=runs/joint \
        --config.method.name=joint

Audio is the fast, dominant modality; video carries the rest of the class information but
is learned slowly (mlb_jax/data/README.md explains the construction and knobs).
"""

import ml_collections

from mlb_jax.config_base import synthetic_av


def get_config() -> ml_collections.ConfigDict:
    """Returns the demo config (fields and comments: mlb_jax/config_base.py)."""
    return synthetic_av()
