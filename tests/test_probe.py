import numpy as np

from mlb_jax.probe import linear_probe_accuracy


def test_probe_separates_linearly_separable_classes():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16)) * 4
    labels = rng.integers(0, 4, 400)
    feats = centers[labels] + rng.normal(size=(400, 16))
    acc = linear_probe_accuracy(feats[:300], labels[:300], feats[300:], labels[300:], 4)
    assert acc == 1.0


def test_probe_is_at_chance_on_uninformative_features():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(2000, 8))
    labels = rng.integers(0, 4, 2000)
    acc = linear_probe_accuracy(feats[:1000], labels[:1000], feats[1000:], labels[1000:], 4)
    assert 0.18 < acc < 0.32  # chance = 0.25, 1000 test examples: std ~0.014
