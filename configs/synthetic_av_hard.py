"""The demo with a fainter video cue: the synthetic dataset of the README's comparison tables.

    python -m mlb_jax.compare --config=configs/synthetic_av_hard.py \
        --methods=joint,multiloss,mlb --seeds=0,1,2 --workdir=runs/compare_hard

Identical to configs/synthetic_av.py except `data.synthetic.video_strength` 0.04 (demo: the
generator's default 0.06). Video is then learned late, if at all, and when it is learned is a
threshold event that float rounding can move by epochs: results vary strongly with the seed
and the machine, so compare methods over several seeds here, never one run.
"""

import ml_collections

from mlb_jax.config_base import synthetic_av


def get_config() -> ml_collections.ConfigDict:
    """Returns the demo config with video_strength 0.04."""
    c = synthetic_av()
    c.data.synthetic.video_strength = 0.04  # fainter class grating: video learned late
    return c
