"""A tiny variant of synthetic_av for tests and smoke runs: seconds, not minutes.

python -m mlb_jax.train --config=configs/tiny.py --workdir=/tmp/tiny
"""

import ml_collections

from mlb_jax.config_base import synthetic_av


def get_config() -> ml_collections.ConfigDict:
    """Returns synthetic_av with tiny data, model and schedule."""
    c = synthetic_av()
    c.progress = False
    c.model.base_width = 2
    c.train.epochs = 2
    c.train.batch_size = 16
    c.train.eval_batch_size = 32
    c.train.log_every = 2
    c.train.lr = 0.05
    c.probe.steps = 50
    c.data.synthetic.n_train = 128
    c.data.synthetic.n_val = 32
    c.data.synthetic.n_test = 40  # not a multiple of the eval batch: exercises padding
    c.data.synthetic.spectrogram_shape = (32, 24)
    c.data.synthetic.frames_shape = (2, 16, 16, 3)
    # Crops and flips of the training frames (resized back to 16x16): every tiny run, the
    # kill-and-resume tests included, goes through the augmentation path.
    c.data.augment.enabled = True
    # The post-training evaluation (mlb_jax/evaluate.py) compiles its own passes: tiny runs
    # skip it, and the tests of the evaluation turn it on.
    c.evaluate.enabled = False
    return c
