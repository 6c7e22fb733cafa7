"""The multimodal classifier: per-modality encoders, unimodal heads and one fusion head.

``MultimodalClassifier`` is keyed by modality name throughout (nothing assumes two modalities
or their names), and its attribute layout makes parameter paths predictable for per-modality
masks:

* ``encoders/<modality>/...``: the modality's encoder (ResNet-18 for the ``audio`` and ``video``
  kinds, a Conformer or temporal convolution network for the ``conformer`` and ``tcn`` kinds);
* ``heads/<modality>/{kernel,bias}``: its unimodal head Linear(D -> K);
* ``fusion/...``: the fusion head; parameters reading only modality m are at
  ``fusion/<block>/<m>/...`` (see :mod:`mlb_jax.models.fusion`), shared ones elsewhere.

The model holds no shared submodules, so ``nnx.split`` -> ``jax.jit`` -> ``nnx.merge`` works in
both NNX graph and tree mode. ``train`` is an explicit argument of ``__call__``: with
``train=True`` BatchNorm uses batch statistics and updates its running statistics, and dropout
is active; with ``train=False`` neither happens. Dropout random streams are forked at
construction from ``rngs`` (its ``dropout`` stream, or ``default`` when it has none) and stored
in the module as ``nnx.RngState``, so a functional train step must carry the non-``Param``
state (batch statistics and RNG counters) in and out of ``jax.jit``.

The convolution algorithm of the ResNet encoders is the config field ``conv`` (``auto`` |
``tuned`` | ``plan`` | ``xla``, see :mod:`mlb_jax.models.conv`; ``conv_max_scratch`` bounds the
memory of ``tuned``), resolved once when the model is built. The
sequence encoders (:mod:`mlb_jax.models.sequence`) run XLA's 1-D convolutions and ignore
``conv`` and ``base_width``.
"""

import dataclasses
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections
from flax import nnx

from mlb_jax.batch_format import length_key
from mlb_jax.models.conv import resolve
from mlb_jax.models.fusion import build_fusion, check_fusion_name, check_modality_names
from mlb_jax.models.heads import unimodal_heads
from mlb_jax.models.resnet import AudioEncoder, VideoEncoder
from mlb_jax.models.sequence import ConformerEncoder, TemporalConvEncoder

# The one place that maps an encoder kind (config field ``modalities.<m>.kind``) to its class.
ENCODERS: dict[str, type[nnx.Module]] = {
    "audio": AudioEncoder,
    "video": VideoEncoder,
    "conformer": ConformerEncoder,
    "tcn": TemporalConvEncoder,
}
# The kinds built on ResNet-18, which take ``in_channels``, ``base_width`` and ``conv``; the
# others are sequence encoders ([B, L, D] plus lengths), which take ``in_features``.
RESNET_KINDS = ("audio", "video")
# Per kind, the per-modality fields (besides ``kind``) it takes; each but ``in_channels`` and
# ``in_features`` is the encoder constructor's keyword argument of the same name.
ENCODER_FIELDS: dict[str, tuple[str, ...]] = {
    "audio": ("in_channels",),
    "video": ("in_channels",),
    "conformer": (
        "in_features",
        "dim",
        "depth",
        "heads",
        "ff_mult",
        "conv_kernel",
        "positions",
        "dropout",
    ),
    "tcn": ("in_features", "width", "depth", "kernel", "dropout"),
}
# Channels when a modality's config leaves ``in_channels`` out.
DEFAULT_IN_CHANNELS = {"audio": 1, "video": 3}

# Fields of ``model_config`` accepted by :func:`build_model`, with their defaults.
CONFIG_DEFAULTS: dict[str, Any] = {
    "base_width": 64,
    "conv": "auto",
    "conv_max_scratch": math.inf,
    "fusion": "late_linear",
    "fusion_hidden": 64,
    "dropout": 0.1,
    "num_classes": None,
    # Per-modality encoder overrides for a config whose modalities come from the dataset; the
    # trainer applies them (`trainer.modalities_from_dataset`), the model ignores them.
    "encoders": "",
}


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """What encodes one modality: encoder kind, input width and encoder hyper-parameters.

    Not to be confused with ``mlb_jax.data.ModalitySpec``, which describes how a modality is
    stored. The field names are those of the model config's ``modalities.<m>``. Every field but
    ``kind`` defaults to ``None``, "not given": the kind's default, or an error for a required
    field. A field given (not ``None``) to a kind that does not take it (see
    :data:`ENCODER_FIELDS`) is an error.

    Attributes:
        kind: encoder kind, a key of :data:`ENCODERS`: ``"audio"`` (ResNet-18 on spectrograms
            [B, F, T(, C)]), ``"video"`` (ResNet-18 on clips [B, T, H, W, C]), ``"conformer"``
            (:class:`~mlb_jax.models.sequence.ConformerEncoder`) or ``"tcn"``
            (:class:`~mlb_jax.models.sequence.TemporalConvEncoder`), both on feature sequences
            [B, L, D] with valid lengths ``inputs[length_key(m)]``.
        in_channels: ResNet kinds only: input channels; default audio 1, video 3.
        in_features: sequence kinds only, required: the feature width D of [B, L, D].
        dim: ``conformer``: model width, the feature width (default 144).
        depth: ``conformer``: Conformer blocks (default 5); ``tcn``: convolution layers
            (default 3).
        heads: ``conformer``: attention heads, dividing ``dim`` (default 4).
        ff_mult: ``conformer``: feed-forward hidden width / ``dim`` (default 4).
        conv_kernel: ``conformer``: depthwise convolution kernel over time, odd (default 31).
        positions: ``conformer``: ``'rotary'`` (default) or ``'none'``.
        width: ``tcn``: channels of every layer, the feature width (default 64).
        kernel: ``tcn``: convolution kernel over time, odd (default 5).
        dropout: sequence kinds: the encoder's dropout rate (default 0.1); independent of the
            model config's top-level ``dropout``, which is the fusion head's.
    """

    kind: str
    in_channels: int | None = None
    in_features: int | None = None
    dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    ff_mult: int | None = None
    conv_kernel: int | None = None
    positions: str | None = None
    width: int | None = None
    kernel: int | None = None
    dropout: float | None = None

    def given(self) -> dict[str, Any]:
        """The fields other than ``kind`` that are set (not ``None``), in declaration order."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "kind" and getattr(self, field.name) is not None
        }


_MODALITY_FIELDS = tuple(field.name for field in dataclasses.fields(EncoderSpec))


@dataclasses.dataclass(frozen=True)
class ModalitySpec(EncoderSpec):
    """Deprecated alias of :class:`EncoderSpec`, kept for one release; use ``EncoderSpec``.

    Renamed because ``mlb_jax.data.ModalitySpec`` is an unrelated stored-feature spec.
    Constructing one warns with a ``DeprecationWarning``.
    """

    def __post_init__(self) -> None:
        """Warns at the caller's line (level 3: here, the dataclass ``__init__``, the caller)."""
        warnings.warn(
            "mlb_jax.models.ModalitySpec is deprecated: use mlb_jax.models.EncoderSpec",
            DeprecationWarning,
            stacklevel=3,
        )


class ModelOutput(NamedTuple):
    """Everything one forward pass returns (a pytree, so it passes through ``jax.jit``).

    Attributes:
        logits: fused logits [B, K].
        unimodal_logits: modality name -> unimodal-head logits [B, K].
        features: modality name -> pooled encoder feature [B, D_m].
    """

    logits: jax.Array
    unimodal_logits: dict[str, jax.Array]
    features: dict[str, jax.Array]


def _fields_of(spec: EncoderSpec) -> dict[str, Any]:
    """All fields of a spec by name (``dataclasses.asdict`` without its deep copy)."""
    return {field.name: getattr(spec, field.name) for field in dataclasses.fields(EncoderSpec)}


def _as_spec(name: str, spec: EncoderSpec | Mapping[str, Any]) -> EncoderSpec:
    """Normalises a modality description and checks its kind, fields and input width."""
    if not isinstance(spec, EncoderSpec):
        unknown = sorted(set(spec) - set(_MODALITY_FIELDS))
        if unknown:
            raise ValueError(
                f"modality {name!r}: unknown field(s) {unknown}; expected {list(_MODALITY_FIELDS)}"
            )
        if "kind" not in spec:
            raise ValueError(f"modality {name!r}: missing field 'kind' (one of {sorted(ENCODERS)})")
        spec = EncoderSpec(**spec)
    if spec.kind not in ENCODERS:
        sequence_kinds = sorted(set(ENCODERS) - set(RESNET_KINDS))
        raise ValueError(
            f"modality {name!r}: unknown encoder kind {spec.kind!r}; expected one of "
            f"{sorted(RESNET_KINDS)} (ResNet-18 on spectrograms / frames) or {sequence_kinds} "
            "(feature sequences [B, L, D] with lengths)"
        )
    taken = ENCODER_FIELDS[spec.kind]
    not_taken = [field for field in spec.given() if field not in taken]
    if not_taken:
        raise ValueError(
            f"modality {name!r}: field(s) {not_taken} do not apply to encoder kind "
            f"{spec.kind!r}, which takes {list(taken)}"
        )
    if spec.kind not in RESNET_KINDS:
        if spec.in_features is None:
            raise ValueError(
                f"modality {name!r}: encoder kind {spec.kind!r} needs field 'in_features', the "
                "feature width D of its [B, L, D] input"
            )
        # Values are checked by the encoder's constructor, whose messages name the modality.
        return spec
    channels = DEFAULT_IN_CHANNELS[spec.kind] if spec.in_channels is None else spec.in_channels
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(
            f"modality {name!r}: in_channels must be a positive integer, got {spec.in_channels!r}"
        )
    # A new EncoderSpec, not dataclasses.replace: that would rebuild (and re-warn) a
    # deprecated ModalitySpec.
    return EncoderSpec(**{**_fields_of(spec), "in_channels": channels})


def _build_encoder(
    name: str,
    spec: EncoderSpec,
    *,
    base_width: int,
    conv: str,
    conv_max_scratch: float,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """Builds a checked spec's encoder: ResNet kinds get width and convolution, not others."""
    cls = ENCODERS[spec.kind]
    if spec.kind in RESNET_KINDS:
        return cls(
            spec.in_channels,
            base_width=base_width,
            conv=conv,
            conv_max_scratch=conv_max_scratch,
            name=name,
            rngs=rngs,
        )
    options = spec.given()
    in_features = options.pop("in_features")
    return cls(in_features, name=name, rngs=rngs, **options)


class MultimodalClassifier(nnx.Module):
    """Encoders, unimodal heads and a fusion head over any M >= 2 named modalities.

    Example:
        >>> import jax.numpy as jnp
        >>> model = MultimodalClassifier(
        ...     {"audio": EncoderSpec("audio"), "video": EncoderSpec("video")},
        ...     num_classes=6, base_width=4, rngs=nnx.Rngs(params=0, dropout=1))
        >>> batch = {"audio": jnp.zeros((2, 64, 32)), "video": jnp.zeros((2, 3, 32, 32, 3))}
        >>> out = model(batch, train=False)
        >>> out.logits.shape, out.unimodal_logits["video"].shape, out.features["audio"].shape
        ((2, 6), (2, 6), (2, 32))
    """

    def __init__(
        self,
        modalities: Mapping[str, EncoderSpec | Mapping[str, Any]],
        num_classes: int,
        *,
        base_width: int = 64,
        conv: str = "auto",
        conv_max_scratch: float = math.inf,
        fusion: str = "late_linear",
        fusion_hidden: int = 64,
        dropout: float = 0.1,
        rngs: nnx.Rngs,
    ):
        """Builds the model.

        Args:
            modalities: modality name -> :class:`EncoderSpec` (or a mapping of its fields:
                ``kind`` and the fields that kind takes, see :data:`ENCODER_FIELDS`), in order;
                the order fixes the first (conditioning / gating) modality of ``film`` and
                ``gated`` fusion.
            num_classes: K.
            base_width: ResNet base width (64 is the standard ResNet-18; D = 8 * base_width);
                sequence encoders ignore it.
            conv: the ResNet encoders' convolution algorithm, ``config.model.conv``:
                ``'auto'`` (the CPU plan of :mod:`mlb_jax.models.conv` on the CPU backend, XLA's
                convolution elsewhere), ``'plan'``, ``'tuned'`` (measured per layer) or
                ``'xla'``; resolved once, here. Sequence encoders ignore it.
            conv_max_scratch: ``config.model.conv_max_scratch``, the extra scratch memory a
                ``'tuned'`` layer may use over XLA's convolution, in multiples of its input
                (`mlb_jax.models.conv_tune.choose`; inf = no bound).
            fusion: a key of :data:`mlb_jax.models.fusion.FUSIONS`.
            fusion_hidden: hidden / token width of ``mid_mlp`` and ``transformer`` fusion.
            dropout: dropout rate of ``mid_mlp`` and ``transformer`` fusion.
            rngs: random streams: ``params`` (or ``default``) for initialisation, ``dropout`` (or
                ``default``) forked into the dropout layers.

        Raises:
            ValueError: on an unknown encoder kind, fusion name or convolution choice, a bad
                modality name or channel count, a modality field its kind does not take, a
                sequence kind without ``in_features`` or with a bad hyper-parameter, fewer
                modalities than the fusion needs, or a non-positive ``num_classes``.
        """
        # Validate everything before building encoders, which is the slow part.
        check_modality_names(tuple(modalities), minimum=1)
        specs = {name: _as_spec(name, spec) for name, spec in modalities.items()}
        check_fusion_name(fusion)
        # What every encoder convolution runs, e.g. 'plan' or 'xla' (static, for the records).
        self.conv_algorithm = resolve(conv)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        # Static and ordered: nnx.Dict iteration order after a merge is not the build order.
        self.modality_names = tuple(specs)
        self.encoders = nnx.Dict(
            {
                name: _build_encoder(
                    name,
                    spec,
                    base_width=base_width,
                    conv=self.conv_algorithm,
                    conv_max_scratch=conv_max_scratch,
                    rngs=rngs,
                )
                for name, spec in specs.items()
            }
        )
        dims = self.feature_dims
        self.heads = unimodal_heads(dims, num_classes, rngs=rngs)
        self.fusion = build_fusion(
            fusion, dims, num_classes, hidden=fusion_hidden, dropout=dropout, rngs=rngs
        )

    @property
    def feature_dims(self) -> dict[str, int]:
        """Modality name -> pooled feature width D_m (8 * base_width, ``dim`` or ``width``)."""
        return {name: self.encoders[name].out_features for name in self.modality_names}

    def __call__(self, inputs: Mapping[str, jax.Array], *, train: bool) -> ModelOutput:
        """Runs encoders, unimodal heads and fusion.

        Args:
            inputs: modality name -> batch: ``audio`` kind [B, F, T] or [B, F, T, C], ``video``
                kind [B, T, H, W, C], sequence kinds (``conformer``, ``tcn``) [B, L, D], with
                their valid lengths int32 [B] at ``length_key(name)`` (optional: without it
                every step is valid). Other keys (labels, ids) are ignored.
            train: batch statistics, running-statistics updates and dropout if True; running
                statistics and no dropout if False.

        Returns:
            :class:`ModelOutput` with ``logits`` [B, K], ``unimodal_logits`` {name: [B, K]} and
            ``features`` {name: [B, D_m]}.

        Raises:
            ValueError: if a modality is missing from ``inputs`` or its array has the wrong rank
                or channel / feature count, or a sequence modality's lengths are not [B] (the
                message names the modality and the expected shape).
        """
        features = self.encode(inputs, train=train)
        unimodal_logits = {name: self.heads[name](features[name]) for name in self.modality_names}
        return ModelOutput(self.fusion(features, train=train), unimodal_logits, features)

    def encode(
        self,
        inputs: Mapping[str, jax.Array],
        *,
        train: bool,
        names: Sequence[str] | None = None,
    ) -> dict[str, jax.Array]:
        """Runs the encoders: each modality's pooled feature.

        An encoder with ``takes_lengths`` (the sequence encoders) also gets
        ``inputs[length_key(name)]`` (int32 [B] valid steps) when the batch has it; without it
        every step is valid (e.g. an absent modality's all-zero input).

        Args:
            inputs: modality name -> batch (see `__call__`), plus the sequence lengths.
            train: see `__call__`.
            names: the modalities to encode; ``None``: all of them.

        Returns:
            modality name -> feature [B, D_m], for ``names`` in order.

        Raises:
            ValueError: if a modality is missing from ``inputs`` (the message names it).
        """
        names = self.modality_names if names is None else tuple(names)
        missing = [name for name in names if name not in inputs]
        if missing:
            raise ValueError(
                f"missing input for modality {missing[0]!r}: the model expects "
                f"{list(self.modality_names)}, got {sorted(inputs)}"
            )
        features = {}
        for name in names:
            encoder = self.encoders[name]
            if getattr(encoder, "takes_lengths", False):
                features[name] = encoder(
                    inputs[name], lengths=inputs.get(length_key(name)), train=train
                )
            else:
                features[name] = encoder(inputs[name], train=train)
        return features

    def modality_patterns(self) -> dict[str, list[str]]:
        """Regexes selecting each modality's own parameters, for ``mlb_jax.modality_masks``.

        Each pattern is matched with ``re.search`` against a '/'-joined parameter path such as
        ``encoders/audio/resnet/stem/conv/kernel``. Modality m owns its encoder, its unimodal
        head and the fusion blocks that read only m (``fusion/<block>/<m>/...``); shared fusion
        parameters (biases, layers after the modalities meet) match no pattern.

        Returns:
            modality name -> list of regexes.
        """
        blocks = self.fusion.modality_blocks_of()
        patterns = {}
        for name in self.modality_names:
            key = re.escape(name)
            patterns[name] = [
                f"^encoders/{key}/",
                f"^heads/{key}/",
                *(f"^fusion/{re.escape(block)}/{key}/" for block in blocks[name]),
            ]
        return patterns


def _as_dict(value: Any, what: str) -> dict[str, Any]:
    """Turns a ConfigDict or mapping into a plain dict, or raises naming ``what``."""
    if isinstance(value, ml_collections.ConfigDict):
        return value.to_dict()
    if isinstance(value, Mapping):
        return dict(value)
    raise ValueError(f"{what} must be a ConfigDict or mapping, got {type(value).__name__}")


def build_model(
    model_config: ml_collections.ConfigDict | Mapping[str, Any],
    num_classes: int | None = None,
    *,
    rngs: nnx.Rngs,
) -> MultimodalClassifier:
    """Builds a :class:`MultimodalClassifier` from a model config.

    Fields (all but ``modalities`` optional, defaults in :data:`CONFIG_DEFAULTS`):
    ``modalities``, ``base_width``, ``conv`` ('auto' | 'tuned' | 'plan' | 'xla', see
    :mod:`mlb_jax.models.conv`) and ``conv_max_scratch`` (the memory bound of 'tuned'; these
    three for the ResNet kinds only, ignored by sequence encoders),
    ``fusion``, ``fusion_hidden``, ``dropout`` (the fusion head's), ``num_classes``.

    ``modalities`` maps each name to its fields (see :class:`EncoderSpec`; ``kind`` required,
    every other field optional unless noted):

    * ``kind: 'audio' | 'video'``: ``in_channels`` (default 1 / 3);
    * ``kind: 'conformer'``: ``in_features`` (required, D), ``dim`` (144), ``depth`` (5),
      ``heads`` (4), ``ff_mult`` (4), ``conv_kernel`` (31, odd), ``positions`` ('rotary' |
      'none'), ``dropout`` (0.1);
    * ``kind: 'tcn'``: ``in_features`` (required, D), ``width`` (64), ``depth`` (3), ``kernel``
      (5, odd), ``dropout`` (0.1).

    A sequence modality ``m``'s batch also carries its lengths at
    ``mlb_jax.batch_format.length_key(m)``.

    Args:
        model_config: the config (typically ``config.model``).
        num_classes: K, e.g. from the dataset; needed when the config's ``num_classes`` is
            unset, and must agree with it when both are given.
        rngs: random streams, see :class:`MultimodalClassifier`.

    Returns:
        The model.

    Raises:
        ValueError: naming the field, on an unknown or missing field, a modality field that its
            encoder kind does not take, an unknown encoder kind, fusion or convolution choice,
            or a missing or conflicting number of classes.
    """
    config = _as_dict(model_config, "model config")
    unknown = sorted(set(config) - set(CONFIG_DEFAULTS) - {"modalities"})
    if unknown:
        raise ValueError(
            f"model config: unknown field(s) {unknown}; expected {['modalities', *CONFIG_DEFAULTS]}"
        )
    if "modalities" not in config:
        raise ValueError("model config: missing field 'modalities' (name -> {kind, ...})")
    fields = {**CONFIG_DEFAULTS, **config}
    modalities = {
        name: _as_dict(spec, f"model config field 'modalities.{name}'")
        for name, spec in _as_dict(fields["modalities"], "model config field 'modalities'").items()
    }
    configured = fields["num_classes"]
    if num_classes is None and configured is None:
        raise ValueError(
            "model config: 'num_classes' is unset and no num_classes was passed to build_model"
        )
    if num_classes is not None and configured is not None and num_classes != configured:
        raise ValueError(
            f"model config: num_classes={configured} disagrees with num_classes={num_classes} "
            "passed to build_model (e.g. from the dataset)"
        )
    return MultimodalClassifier(
        modalities,
        num_classes if num_classes is not None else configured,
        base_width=fields["base_width"],
        conv=fields["conv"],
        conv_max_scratch=float(fields["conv_max_scratch"]),
        fusion=fields["fusion"],
        fusion_hidden=fields["fusion_hidden"],
        dropout=fields["dropout"],
        rngs=rngs,
    )
