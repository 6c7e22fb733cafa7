import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from mlb_jax import modality_masks
from mlb_jax.balancing import (
    labels_from_masks,
    modality_labels,
    parameter_paths,
    unclaimed_parameters,
)

PARAMS = {
    "encoders": {"audio": {"conv": jnp.ones(2)}, "video": {"conv": jnp.ones(3)}},
    "heads": {"audio": {"kernel": jnp.ones(2)}, "video": {"kernel": jnp.ones(2)}},
    "fusion": {"proj": {"audio": jnp.ones(1), "video": jnp.ones(1)}, "bias": jnp.ones(1)},
}


def selected(params, mask):
    return [p for p, m in zip(parameter_paths(params), jax.tree.leaves(mask)) if m]


def test_patterns_select_exactly_their_paths():
    masks = modality_masks(
        PARAMS,
        {
            "audio": r"/audio\b",
            "video": [r"^encoders/video/", r"^heads/video/", r"^fusion/proj/video$"],
        },
    )
    assert selected(PARAMS, masks["audio"]) == [
        "encoders/audio/conv",
        "fusion/proj/audio",
        "heads/audio/kernel",
    ]
    assert selected(PARAMS, masks["video"]) == [
        "encoders/video/conv",
        "fusion/proj/video",
        "heads/video/kernel",
    ]
    assert unclaimed_parameters(PARAMS, masks) == ["fusion/bias"]
    assert jax.tree.structure(masks["audio"]) == jax.tree.structure(PARAMS)


def test_overlap_names_every_clashing_parameter():
    with pytest.raises(ValueError) as err:
        modality_masks(PARAMS, {"audio": "audio|fusion", "video": "video|fusion"})
    message = str(err.value)
    assert "claimed by two modalities" in message
    for path in (
        "fusion/bias (audio and video)",
        "fusion/proj/audio (audio and video)",
        "fusion/proj/video (audio and video)",
    ):
        assert path in message


def test_pattern_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="patterns of modality 'video' .* match no parameter"):
        modality_masks(PARAMS, {"audio": "audio", "video": "^vision/"})


def test_invalid_regex_names_the_modality():
    with pytest.raises(ValueError, match="invalid pattern for modality 'audio'"):
        modality_masks(PARAMS, {"audio": "(", "video": "video"})


def test_nnx_state_paths_drop_value_suffix():
    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.encoders = nnx.Dict(
                {"audio": nnx.Linear(2, 2, rngs=rngs), "video": nnx.Linear(2, 2, rngs=rngs)}
            )
            self.bias = nnx.Param(jnp.zeros(2))

    params = nnx.state(Tiny(nnx.Rngs(0)), nnx.Param)
    assert parameter_paths(params) == [
        "bias",
        "encoders/audio/bias",
        "encoders/audio/kernel",
        "encoders/video/bias",
        "encoders/video/kernel",
    ]
    masks = modality_masks(params, {"audio": "encoders/audio", "video": "encoders/video"})
    assert jax.tree.structure(masks["video"]) == jax.tree.structure(params)
    assert selected(params, masks["video"]) == ["encoders/video/bias", "encoders/video/kernel"]
    assert unclaimed_parameters(params, masks) == ["bias"]


def test_labels_name_the_owner_or_none_and_agree_with_masks():
    patterns = {"audio": r"/audio\b", "video": [r"^encoders/video/", r"^heads/video/"]}
    labels = modality_labels(PARAMS, patterns)
    flat = dict(zip(parameter_paths(PARAMS), jax.tree.structure(PARAMS).flatten_up_to(labels)))
    assert flat == {
        "encoders/audio/conv": "audio",
        "encoders/video/conv": "video",
        "fusion/bias": None,
        "fusion/proj/audio": "audio",
        "fusion/proj/video": None,
        "heads/audio/kernel": "audio",
        "heads/video/kernel": "video",
    }
    masks = modality_masks(PARAMS, patterns)
    # Masks to labels and back: the same ownership.
    assert jax.tree.structure(PARAMS).flatten_up_to(labels_from_masks(masks)(PARAMS)) == list(
        flat.values()
    )
    assert unclaimed_parameters(PARAMS, masks) == ["fusion/bias", "fusion/proj/video"]
    with pytest.raises(ValueError, match="claimed by two modalities"):
        modality_labels(PARAMS, {"audio": "audio|bias", "video": "video|bias"})


def test_labels_from_overlapping_masks_name_every_clash():
    masks = {
        "audio": jax.tree.map(lambda _: True, PARAMS),
        "video": modality_masks(PARAMS, {"video": "video"})["video"],
    }
    with pytest.raises(ValueError) as err:
        labels_from_masks(masks)(PARAMS)
    message = str(err.value)
    assert message.startswith("parameters selected by two modality masks: ")
    for path in ("encoders/video/conv", "fusion/proj/video", "heads/video/kernel"):
        assert f"{path} (audio and video)" in message
