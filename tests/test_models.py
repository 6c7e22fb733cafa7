"""Tests of the model layer: ResNet-18 encoders, fusion heads, the multimodal classifier.

Compilation dominates on CPU, so the tests use tiny widths, build each tiny model once
(``_model`` is cached; tests that mutate state build their own), trace shapes and input errors
with ``jax.eval_shape`` instead of running them, and initialise with an ``rbg`` key: the default
threefry generator costs XLA tens of seconds to compile for the many parameter shapes of a
ResNet, and the initialisers' distributions do not depend on the generator. Only the full-width
parameter count uses ``nnx.eval_shape`` (tracing an initialiser is slow per parameter, cheap per
element).
"""

import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from mlb_jax.models import (
    FUSIONS,
    EncoderSpec,
    LateLinearFusion,
    ModalitySpec,
    ModelOutput,
    MultimodalClassifier,
    ResNet18,
    build_fusion,
    build_model,
    conv_tune,
    pooling,
    resnet,
)
from mlb_jax.models import conv as conv_module
from mlb_jax.models.pooling import max_pool_3x3_s2

K = 3  # classes
WIDTH = 4  # ResNet base width of the tiny models; D = 8 * WIDTH
D = 8 * WIDTH
AUDIO = (2, 16, 12)  # [B, F, T]
VIDEO = (2, 2, 16, 16, 3)  # [B, T, H, W, C]


def _rngs(seed: int = 0) -> nnx.Rngs:
    return nnx.Rngs(
        params=jax.random.key(seed, impl="rbg"), dropout=jax.random.key(seed + 1, impl="rbg")
    )


def _modalities(m: int) -> dict[str, EncoderSpec]:
    specs = {"audio": EncoderSpec("audio"), "video": EncoderSpec("video", 3)}
    if m == 3:
        specs["audio2"] = EncoderSpec("audio", 2)
    return specs


def _normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    # numpy draws: jax.random would compile one program per shape.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _inputs(m: int) -> dict[str, jax.Array]:
    inputs = {"audio": _normal(1, AUDIO), "video": _normal(2, VIDEO)}
    if m == 3:
        inputs["audio2"] = _normal(3, (*AUDIO, 2))
    return inputs


@functools.cache
def _model(m: int = 2, fusion: str = "late_linear") -> MultimodalClassifier:
    """A tiny model shared by the tests that only read it (XLA's convolutions: no tuning)."""
    return MultimodalClassifier(
        _modalities(m), K, base_width=WIDTH, conv="xla", fusion=fusion, rngs=_rngs()
    )


def _abstract_forward(model: nnx.Module, inputs, *, train: bool):
    """Traces the forward pass without compiling or running it; returns output shapes."""
    graphdef, state = nnx.split(model)
    return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=train), state, inputs)


def _apply(module: nnx.Module, *args, train: bool):
    """Runs ``module(*args, train=train)`` the way the train step does: split, jit, merge."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    @jax.jit
    def forward(params, rest, *args):
        merged = nnx.merge(graphdef, params, rest)
        return merged(*args, train=train), nnx.state(merged, nnx.Not(nnx.Param))

    out, new_rest = forward(params, rest, *args)
    nnx.update(module, new_rest)
    return out


def _features(m: int, dim: int = 8, batch: int = 4) -> dict[str, jax.Array]:
    names = ["audio", "video", "audio2"][:m]
    return {n: _normal(10 + i, (batch, dim)) for i, n in enumerate(names)}


def _param_paths(module: nnx.Module) -> list[str]:
    paths = []
    for path, _ in jax.tree_util.tree_flatten_with_path(nnx.state(module, nnx.Param))[0]:
        assert path[-1] == jax.tree_util.GetAttrKey("value")
        paths.append("/".join(str(entry.key) for entry in path[:-1]))
    return paths


def _count(module: nnx.Module) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


# --- ResNet-18 ------------------------------------------------------------------------------


def test_full_width_resnet18_parameter_count():
    # torchvision resnet18 without fc, counting conv kernels and BN scale+bias (no conv biases):
    #   stem   7*7*3*64 + 2*64                                         =     9,536
    #   stage1 2 * (2*3*3*64*64 + 2*2*64)                              =   147,968
    #   stage2 3*3*64*128 + 3*3*128*128 + 4*128 + 64*128 + 2*128
    #          + (2*3*3*128*128 + 4*128)                                =   525,568
    #   stage3 same pattern at 128 -> 256                               = 2,099,712
    #   stage4 same pattern at 256 -> 512                               = 8,393,728
    #   total                                                           = 11,176,512
    # (= 11,689,512 for torchvision resnet18 minus fc's 512*1000 + 1000.) One input channel
    # removes 7*7*2*64 = 6,272 stem weights: 11,170,240.
    rgb = nnx.eval_shape(lambda: ResNet18(3, rngs=nnx.Rngs(0)))
    mono = nnx.eval_shape(lambda: ResNet18(1, rngs=nnx.Rngs(0)))
    assert _count(rgb) == 11_176_512
    assert _count(mono) == 11_170_240
    assert rgb.out_features == mono.out_features == 512


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(224, 224, (7, 7)), (257, 188, (9, 6)), (257, 1004, (9, 32)), (257, 136, (9, 5))],
)
def test_resnet_output_map_matches_reference_sizes(height, width, expected):
    # The reference encoders' output maps: 224x224 frames -> 7x7; spectrograms with 257 bins
    # and T = 188 (CREMA-D), 1004 (AVE), 136 (UCF) -> 9 x T' with T' = 6, 32, 5. Any padding
    # other than PyTorch's explicit 3 (stem) and 1 (pool) would change some of these sizes.
    resnet = _model().encoders["audio"].resnet
    image = jax.ShapeDtypeStruct((1, height, width, 1), jnp.float32)
    out = _abstract_forward(resnet, image, train=False)
    assert out.shape == (1, *expected, D)


def test_max_pool_pads_with_minus_infinity():
    x = -1.0 - jnp.arange(16.0).reshape(1, 4, 4, 1)  # all negative: zero padding would win
    out = max_pool_3x3_s2(x)[0, :, :, 0]
    # Windows centred on (0,0), (0,2), (2,0), (2,2) with one row/column of padding before.
    np.testing.assert_array_equal(out, [[-1.0, -2.0], [-5.0, -6.0]])


@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (2, 8, 6, 2), (1, 5, 5, 1), (1, 4, 11, 2)])
def test_max_pool_gradient_equals_select_and_scatter(shape):
    # Odd and even sides; rounded, rectified inputs tie often (ReLU zeros): the winner of a
    # tie must be select-and-scatter's (and PyTorch's) first maximum in window order.
    rng = np.random.default_rng(sum(shape))
    for x in (rng.standard_normal(shape), np.maximum(np.round(rng.standard_normal(shape)), 0)):
        x = jnp.asarray(x, jnp.float32)
        y, pool_vjp = jax.vjp(max_pool_3x3_s2, x)
        want, want_vjp = jax.vjp(pooling.max_pool_3x3_s2_xla, x)
        np.testing.assert_array_equal(y, want)
        dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
        # Up to the order of the <= 4 additions overlapping windows make into one element.
        np.testing.assert_allclose(pool_vjp(dy)[0], want_vjp(dy)[0], rtol=1e-6, atol=1e-6)
    assert y.shape == (shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2, shape[3])


def test_max_pool_gradient_reads_the_winner_kept_from_the_forward_pass():
    # The gradient must read the forward pass's int8 winner, a buffer of the compiled program:
    # fused into the gradient's fusion, the 9 comparisons would run again for every window
    # covering an input element (the stems' pooling gradients of the 112 step: 26.7 against
    # 12.4 ms) and keep the padded input alive until then.
    x = jax.ShapeDtypeStruct((2, 8, 8, 4), jnp.float32)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(max_pool_3x3_s2(jax.nn.relu(x)) ** 2)))
    text = grad.lower(x).compile().as_text()
    entry = text[text.index("ENTRY") :]
    assert re.search(r"= s8\[2,4,4,4\]\S* fusion\(", entry), entry


def test_video_encoder_folds_frames_and_averages_them():
    # In eval mode every frame is normalised independently, so the clip feature must be the
    # mean over time of the per-frame pooled features; a reshape that mixed up the batch and
    # time axes would mix clips.
    encoder = _model().encoders["video"]
    clips = _inputs(2)["video"]  # [B, T, H, W, C]
    clip_features = _apply(encoder, clips, train=False)
    frame_maps = _apply(encoder.resnet, clips.reshape(-1, *clips.shape[2:]), train=False)
    per_frame = jnp.mean(frame_maps, axis=(1, 2)).reshape(*clips.shape[:2], -1)
    np.testing.assert_allclose(clip_features, jnp.mean(per_frame, axis=1), rtol=1e-5, atol=1e-6)


# --- tiny real model, shared by the numeric tests -------------------------------------------


@pytest.fixture(scope="module")
def model() -> MultimodalClassifier:
    # mid_mlp has dropout, so train/eval differences are visible in the fused logits.
    return _model(2, "mid_mlp")


def test_initialisation_follows_reference(model):
    resnet = model.encoders["video"].resnet
    kernel = resnet.stages[3][1].conv2.conv.kernel[...]  # [3, 3, 8W, 8W]
    fan_out = 3 * 3 * kernel.shape[-1]
    assert float(jnp.mean(kernel)) == pytest.approx(0.0, abs=0.01)
    assert float(jnp.std(kernel)) == pytest.approx(np.sqrt(2.0 / fan_out), rel=0.05)
    scales = jnp.concatenate(
        [
            leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(resnet, nnx.Param))
            if str(path[-2].key) == "scale"
        ]
    )
    assert scales.size == 300  # BN channels at base width 4: 4 + 16 + 40 + 80 + 160
    assert float(jnp.mean(scales)) == pytest.approx(1.0, abs=0.005)
    assert float(jnp.std(scales)) == pytest.approx(0.02, rel=0.15)
    assert float(jnp.abs(resnet.stem.bn.bias[...]).max()) == 0.0
    head = model.heads["audio"].kernel[...]  # PyTorch Linear: U(+-1/sqrt(D))
    assert float(jnp.abs(head).max()) <= 1.0 / np.sqrt(D)
    assert float(jnp.abs(head).max()) > 0.8 / np.sqrt(D)


def _batch_stats(model: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


def test_eval_is_deterministic_and_leaves_batch_stats(model):
    inputs = _inputs(2)
    before = _batch_stats(model)
    first = _apply(model, inputs, train=False)
    second = _apply(model, inputs, train=False)
    assert isinstance(first, ModelOutput)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(before, _batch_stats(model)):
        np.testing.assert_array_equal(a, b)


def test_train_updates_batch_stats_with_momentum_and_uses_dropout(model):
    inputs = _inputs(2)
    stem = model.encoders["audio"].resnet.stem
    old_mean = np.asarray(stem.bn.mean[...])
    batch_mean = np.asarray(jnp.mean(stem.conv(inputs["audio"][..., None]), axis=(0, 1, 2)))
    eval_out = _apply(model, inputs, train=False)
    first = _apply(model, inputs, train=True)
    np.testing.assert_allclose(
        stem.bn.mean[...], 0.9 * old_mean + 0.1 * batch_mean, rtol=1e-4, atol=1e-6
    )
    second = _apply(model, inputs, train=True)
    # Batch statistics do not depend on the running ones: same input, same features.
    for name in ("audio", "video"):
        np.testing.assert_allclose(first.features[name], second.features[name], rtol=1e-5)
        assert not np.allclose(first.features[name], eval_out.features[name])
    # Dropout is active in training and draws fresh masks each step.
    assert not np.allclose(first.logits, second.logits)


def _traced_train(norm: nnx.Module, x: jax.Array):
    """One jitted training call of a BatchNorm: its output and updated running statistics."""
    graphdef, state = nnx.split(norm)

    @jax.jit
    def train(state, x):
        module = nnx.merge(graphdef, state)
        return module(x, use_running_average=False), nnx.state(module, nnx.BatchStat)

    return train(state, x)


def test_resnet_batch_norm_traced_update_equals_flax_without_reading_a_tracers_sharding(
    tracer_sharding_reads,
):
    x = _normal(3, (4, 5, 6, 7))
    options = {"momentum": resnet.BN_MOMENTUM, "epsilon": resnet.BN_EPSILON, "rngs": _rngs(0)}
    flax_out, flax_stats = _traced_train(nnx.BatchNorm(7, **options), x)
    assert tracer_sharding_reads  # flax's own update asks (two per statistic: old and new)
    tracer_sharding_reads.clear()
    options["rngs"] = _rngs(0)
    out, stats = _traced_train(resnet._BatchNorm(7, **options), x)
    assert tracer_sharding_reads == []
    np.testing.assert_array_equal(out, flax_out)
    for name in ("mean", "var"):
        np.testing.assert_array_equal(stats[name][...], flax_stats[name][...])
    # The update itself: from (0, 1) towards the batch's mean and (biased) variance.
    np.testing.assert_allclose(stats["mean"][...], 0.1 * x.mean((0, 1, 2)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["var"][...], 0.9 + 0.1 * x.var((0, 1, 2)), rtol=1e-5)


# --- shapes for every fusion, M = 2 and M = 3 -----------------------------------------------


@pytest.mark.parametrize(("m", "fusion"), [(2, "late_linear"), (3, "gated")])
def test_model_output_shapes(m, fusion):
    out = _abstract_forward(_model(m, fusion), _inputs(m), train=True)
    names = list(_modalities(m))
    assert out.logits.shape == (AUDIO[0], K)
    assert {n: v.shape for n, v in out.unimodal_logits.items()} == {n: (AUDIO[0], K) for n in names}
    assert {n: v.shape for n, v in out.features.items()} == {n: (AUDIO[0], D) for n in names}


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_fusion_output_shapes(fusion, m):
    # The fusion is the only part of the model whose output depends on the fusion name.
    feats = _features(m, batch=5)
    module = build_fusion(fusion, {n: 8 for n in feats}, K, hidden=8, rngs=_rngs())
    for train in (False, True):
        assert _abstract_forward(module, feats, train=train).shape == (5, K)


# --- fusion arithmetic, on random features --------------------------------------------------


def _linear(layer: nnx.Linear, x: jax.Array) -> jax.Array:
    out = x @ layer.kernel[...]
    return out if layer.bias is None else out + layer.bias[...]


@pytest.mark.parametrize("m", [2, 3])
def test_late_linear_equals_concat_then_linear(m):
    feats = _features(m)
    fusion = build_fusion("late_linear", {n: 8 for n in feats}, K, rngs=_rngs())
    kernel = jnp.concatenate([fusion.linear[n].kernel[...] for n in feats], axis=0)  # [8M, K]
    expected = jnp.concatenate(list(feats.values()), axis=-1) @ kernel + fusion.bias[...]
    np.testing.assert_allclose(_apply(fusion, feats, train=True), expected, rtol=1e-5, atol=1e-6)
    split = fusion.split_logits(feats)
    np.testing.assert_allclose(sum(split.values()), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        split["audio"],
        feats["audio"] @ fusion.linear["audio"].kernel[...] + fusion.bias[...] / m,
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("m", [2, 3])
def test_gated_and_film_formulas(m):
    feats = _features(m)
    names = list(feats)
    gated = build_fusion("gated", {n: 8 for n in names}, K, rngs=_rngs())
    o = {n: _linear(gated.proj[n], x) for n, x in feats.items()}
    rest = o["video"] if m == 2 else o["video"] * o["audio2"]
    expected = _linear(gated.out, jax.nn.sigmoid(o["audio"]) * rest)
    np.testing.assert_allclose(_apply(gated, feats, train=True), expected, rtol=1e-5, atol=1e-6)

    film = build_fusion("film", {n: 8 for n in names}, K, rngs=_rngs())
    gamma, beta = jnp.split(_linear(film.film["audio"], feats["audio"]), 2, axis=-1)
    rest = feats["video"] if m == 2 else feats["video"] * feats["audio2"]
    expected = _linear(film.out, gamma * rest + beta)
    np.testing.assert_allclose(_apply(film, feats, train=True), expected, rtol=1e-5, atol=1e-6)


def test_mid_mlp_formula_in_eval():
    feats = _features(2)
    fusion = build_fusion("mid_mlp", {"audio": 8, "video": 8}, K, hidden=6, rngs=_rngs())
    h = feats["audio"] @ fusion.proj["audio"].kernel[...]
    h = h + feats["video"] @ fusion.proj["video"].kernel[...] + fusion.bias[...]
    expected = _linear(fusion.out, jax.nn.relu(_linear(fusion.hidden, jax.nn.relu(h))))
    np.testing.assert_allclose(_apply(fusion, feats, train=False), expected, rtol=1e-5, atol=1e-6)


def test_transformer_sees_every_modality_and_drops_out_only_in_training():
    feats = _features(3)
    fusion = build_fusion("transformer", {n: 8 for n in feats}, K, hidden=8, rngs=_rngs())
    eval_a = _apply(fusion, feats, train=False)
    np.testing.assert_array_equal(eval_a, _apply(fusion, feats, train=False))
    for name in feats:  # each modality's token reaches the CLS output
        changed = {**feats, name: feats[name] + 1.0}
        assert not np.allclose(_apply(fusion, changed, train=False), eval_a)
    assert not np.allclose(_apply(fusion, feats, train=True), _apply(fusion, feats, train=True))


def test_film_and_gated_need_equal_widths():
    with pytest.raises(ValueError, match="'gated'.*same feature width"):
        build_fusion("gated", {"audio": 8, "video": 4}, K, rngs=_rngs())


# --- parameter paths and modality patterns --------------------------------------------------


def test_late_linear_parameter_paths():
    paths = _param_paths(_model(2, "late_linear"))
    fusion_and_heads = sorted(p for p in paths if not p.startswith("encoders/"))
    assert fusion_and_heads == [
        "fusion/bias",
        "fusion/linear/audio/kernel",
        "fusion/linear/video/kernel",
        "heads/audio/bias",
        "heads/audio/kernel",
        "heads/video/bias",
        "heads/video/kernel",
    ]
    assert "encoders/audio/resnet/stem/conv/kernel" in paths
    assert "encoders/video/resnet/stages/3/1/conv2/bn/scale" in paths
    assert "encoders/video/resnet/stages/1/0/downsample/conv/kernel" in paths
    # Stage 1 keeps width and resolution, so it has no downsample.
    assert not any(re.search(r"stages/0/\d/downsample", p) for p in paths)


SHARED_FUSION_PARAMS = {
    "late_linear": {"fusion/bias"},
    "gated": {"fusion/out/kernel", "fusion/out/bias"},
    "film": {"fusion/out/kernel", "fusion/out/bias"},
    "mid_mlp": {
        "fusion/bias",
        "fusion/hidden/kernel",
        "fusion/hidden/bias",
        "fusion/out/kernel",
        "fusion/out/bias",
    },
}
MODALITY_FUSION_BLOCKS = {
    "late_linear": "linear",
    "gated": "proj",
    "film": "film",
    "mid_mlp": "proj",
}


@pytest.mark.parametrize(
    ("fusion", "m"),
    [
        ("late_linear", 2),
        ("late_linear", 3),
        ("gated", 2),
        ("gated", 3),
        ("film", 3),
        ("mid_mlp", 2),
    ],
)
def test_modality_patterns_select_exactly_own_parameters(fusion, m):
    model = _model(m, fusion)
    paths = _param_paths(model)
    patterns = model.modality_patterns()
    assert list(patterns) == list(_modalities(m))
    claimed = {
        name: {p for p in paths if any(re.search(r, p) for r in regexes)}
        for name, regexes in patterns.items()
    }
    block = MODALITY_FUSION_BLOCKS[fusion]
    for name, selected in claimed.items():
        own = (f"encoders/{name}/", f"heads/{name}/", f"fusion/{block}/{name}/")
        assert selected == {p for p in paths if p.startswith(own)}
        assert any(p.startswith(f"fusion/{block}/{name}/") for p in selected) == (
            fusion != "film" or name == "audio"  # FiLM: only the conditioning modality has one
        )
    all_claims = [p for selected in claimed.values() for p in selected]
    assert len(all_claims) == len(set(all_claims))  # nobody claimed twice
    assert set(paths) - set(all_claims) == SHARED_FUSION_PARAMS[fusion]


def test_transformer_declares_tokenisers_as_modality_blocks():
    fusion = build_fusion("transformer", {"audio": 8, "video": 8}, K, hidden=8, rngs=_rngs())
    assert fusion.modality_blocks_of() == {"audio": ["tokens"], "video": ["tokens"]}
    assert sorted(p for p in _param_paths(fusion) if p.startswith("tokens/")) == [
        "tokens/audio/embedding",
        "tokens/audio/proj/bias",
        "tokens/audio/proj/kernel",
        "tokens/video/embedding",
        "tokens/video/proj/bias",
        "tokens/video/proj/kernel",
    ]


# --- config and errors ----------------------------------------------------------------------


def _config(**overrides) -> ml_collections.ConfigDict:
    fields = {
        "modalities": {
            "audio": {"kind": "audio", "in_channels": 1},
            "video": {"kind": "video", "in_channels": 3},
        },
        "base_width": WIDTH,
        "conv": "auto",
        "fusion": "gated",
        "fusion_hidden": 16,
        "dropout": 0.1,
        "num_classes": None,
    }
    # Replace whole fields (ConfigDict.update would merge nested modality dicts).
    return ml_collections.ConfigDict({**fields, **overrides})


def test_build_model_from_config():
    model = build_model(_config(), num_classes=5, rngs=_rngs())
    assert model.feature_dims == {"audio": D, "video": D}
    assert type(model.fusion).name == "gated"
    assert model.heads["video"].kernel.shape == (D, 5)
    assert model.encoders["video"].resnet.stem.conv.kernel.shape == (7, 7, 3, WIDTH)
    configured = build_model(_config(num_classes=4), rngs=_rngs())
    assert configured.fusion.out.kernel.shape == (D, 4)


def _conv_functions(model: nnx.Module) -> set:
    """The ``conv_general_dilated`` of every ``nnx.Conv`` in ``model``."""
    return {
        module.conv_general_dilated
        for _, module in nnx.iter_graph(model)
        if isinstance(module, nnx.Conv)
    }


@pytest.mark.parametrize(
    ("choice", "function"),
    [
        ("plan", conv_module.conv_general_dilated),
        ("xla", jax.lax.conv_general_dilated),
        ("auto", conv_module.conv_function("auto")),
    ],
)
def test_build_model_passes_the_conv_choice_to_every_convolution(choice, function):
    model = build_model(_config(conv=choice), num_classes=5, rngs=_rngs())
    assert model.conv_algorithm == conv_module.resolve(choice)
    assert {model.encoders[n].resnet.conv_algorithm for n in ("audio", "video")} == {
        model.conv_algorithm
    }
    assert _conv_functions(model) == {function}


def test_build_model_passes_the_memory_bound_of_the_tuned_plan():
    # Building traces nothing, so nothing is measured here.
    model = build_model(_config(conv="tuned", conv_max_scratch=2), num_classes=5, rngs=_rngs())
    (function,) = _conv_functions(model)
    assert function is conv_tune.conv_function(2.0) is not conv_tune.conv_function()
    assert function.args[0] is conv_tune.tuner(2.0) and function.args[0].max_scratch == 2.0


def test_conv_choice_defaults_to_auto():
    fields = _config().to_dict()
    del fields["conv"]
    model = build_model(fields, num_classes=5, rngs=_rngs())
    assert model.conv_algorithm == conv_module.resolve("auto")


def test_modality_spec_is_a_deprecated_alias_of_encoder_spec():
    with pytest.warns(DeprecationWarning, match="use mlb_jax.models.EncoderSpec") as caught:
        old = ModalitySpec("video", 3)
    assert caught[0].filename == __file__  # attributed to the caller's line
    assert isinstance(old, EncoderSpec)
    assert "Deprecated alias of :class:`EncoderSpec`" in ModalitySpec.__doc__
    model = MultimodalClassifier(
        {"audio": EncoderSpec("audio"), "video": old}, K, base_width=1, rngs=_rngs()
    )
    assert model.feature_dims == {"audio": 8, "video": 8}


@pytest.mark.parametrize(
    ("overrides", "num_classes", "match"),
    [
        (
            {"conv": "im2col"},
            5,
            r"config.model.conv='im2col' is not a convolution choice: use 'auto' "
            r".*'plan', 'plan_wide', 'tuned' or 'xla'",
        ),
        ({"fusion": "concat"}, 5, r"unknown fusion 'concat'; valid fusions are \['film', 'gated'"),
        (
            {"modalities": {"audio": {"kind": "audio"}, "text": {"kind": "text"}}},
            5,
            r"modality 'text': unknown encoder kind 'text'; expected one of \['audio', 'video'\]",
        ),
        ({"width": 8}, 5, r"unknown field\(s\) \['width'\]"),
        ({}, None, "'num_classes' is unset"),
        ({"num_classes": 4}, 5, "num_classes=4 disagrees with num_classes=5"),
        (
            {"modalities": {"audio": {"kind": "audio"}}, "fusion": "film"},
            5,
            r"this fusion needs at least 2 modalities, got 1: \['audio'\] \(a one-modality",
        ),
    ],
)
def test_build_model_errors(overrides, num_classes, match):
    with pytest.raises(ValueError, match=match):
        build_model(_config(**overrides), num_classes, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    ("name", "shape", "match"),
    [
        (
            "video",
            (2, 3, 32, 32),
            re.escape("video input must have rank 5 [B, T, H, W, C], got shape (2, 3, 32, 32)"),
        ),
        (
            "video",
            (2, 2, 16, 16, 1),
            re.escape(
                "video input must have 3 channel(s) in its last axis [B, T, H, W, C], "
                "got shape (2, 2, 16, 16, 1)"
            ),
        ),
        (
            "audio",
            (2, 16),
            re.escape(
                "audio input must have rank 3 [B, F, T] or 4 [B, F, T, C], got shape (2, 16)"
            ),
        ),
        ("audio", (2, 16, 12, 3), "audio input must have 1 channel"),
        ("audio2", (2, 16, 12), re.escape("audio2 input must have rank 4 [B, F, T, C]")),
    ],
)
def test_bad_input_shapes(name, shape, match):
    inputs = {**_inputs(3), name: jnp.zeros(shape)}
    with pytest.raises(ValueError, match=match):
        _abstract_forward(_model(3), inputs, train=False)


def test_missing_modality():
    inputs = _inputs(2)
    del inputs["video"]
    with pytest.raises(
        ValueError, match=r"missing input for modality 'video'.*\['audio', 'video'\]"
    ):
        _abstract_forward(_model(2), inputs, train=False)


def test_bad_modality_name_and_unknown_fusion_factory():
    with pytest.raises(ValueError, match="modality name 'audio/x'"):
        build_fusion("late_linear", {"audio/x": 8, "video": 8}, K, rngs=_rngs())
    with pytest.raises(
        ValueError, match=r"unknown fusion 'sum'; valid fusions are \[.*'transformer'\]"
    ):
        build_fusion("sum", {"audio": 8, "video": 8}, K, rngs=_rngs())
    assert isinstance(
        build_fusion("late_linear", {"a": 2, "b": 2}, K, rngs=_rngs()), LateLinearFusion
    )
