"""OGM and OGM-GE: on-the-fly gradient modulation of the dominant modality (METHODS.md §3.4).

Every step, the fusion-split logits u_m = W_m x_m + b/M of the late-linear fusion (computed in
the same train-mode forward pass) give each modality a score S_m = sum over the batch of the
softmax probability of the true class. The dominant modality's gradients are multiplied by
k = 1 - tanh(alpha * rho), rho = S_dominant / S_other, the other modality's are left alone.
OGM-GE also adds Gaussian noise with std = (unbiased std of the *unscaled* gradient of that
tensor) + 1e-8 to every modulated tensor of *every* modality, including the one with k = 1.
The loss is the cross-entropy of the fused logits only. Modulation is active for
`start_epoch <= epoch <= end_epoch` (inclusive, as `modulation_starts/ends` of the official
code); the epoch is kept in the method state, so it is checkpointed and resumes exactly.

The scaling is an optax transform (`ogm_gradient_transform`, same conventions as
`mlb_gradient_transform`: state of arrays only, per-step inputs as keyword extra arguments,
unknown extra arguments ignored), chained before the base optimiser by default.

Which parameters are modulated (`scope`):
  * 'conv' (default, the official GeWu-Lab code): the 4-D convolution kernels of each
    modality's encoder only; BatchNorm scale/bias, unimodal heads and fusion are untouched.
  * 'encoder' (MLB's `Bias_Infusion_OGM`): every parameter of the modality's encoder and of its
    unimodal head (`enc_m` in MLB), any shape; the fusion layer is untouched.

Deliberate differences from the references:
  * M > 2 modalities: rho_m = S_m / min_{j != m} S_j and every modality with rho_m > 1 gets
    k_m = 1 - tanh(alpha * rho_m) (BalanceBenchmark's three-modality ratio, but with the
    official score, not its correct-only cosine score). For M = 2 this is exactly the official
    rule, including its tie-break: when all scores are equal the first modality is treated as
    dominant (the official `else` branch scales audio with 1 - tanh(alpha)).
  * OGM-GE on a tensor with a single element uses std 0 (+ 1e-8) where PyTorch's unbiased std
    would be NaN.
  * The noise key is `fold_in(fold_in(base_key, update_count), leaf_index)`: reproducible per
    step and per tensor, unlike PyTorch's global generator.
  * Neither of the reference bugs M-8 (OGM-GE unreachable, wrong handler signature) nor O-1
    (film/gated slicing) applies: the method only runs with the late-linear fusion and says so.
"""

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlb_jax.balancing import MLBState, modality_masks, parameter_paths
from mlb_jax.balancing.transform import check_disjoint, flat_masks, initial_state, scale_selected
from mlb_jax.methods.base import EpochContext, Method
from mlb_jax.models.fusion import LateLinearFusion

PyTree = Any
MaskOrFn = PyTree | Callable[[PyTree], PyTree]
ScalarOrSchedule = float | jax.Array | optax.Schedule

SCOPES = ("conv", "encoder")
# Floor of the denominator of rho: a score that underflowed to 0 gives rho = huge (k -> 0)
# instead of inf / NaN.
_SCORE_FLOOR = 1e-12
# Added to the unbiased std of each gradient tensor, as the official code does.
NOISE_STD_EPS = 1e-8


# ----------------------------------------------------------------------------- forward


class SplitOutput(NamedTuple):
    """`ModelOutput` plus the fusion-split logits (a pytree, so it passes through `jax.jit`).

    Attributes:
      logits: fused logits [B, K].
      unimodal_logits: modality -> unimodal-head logits [B, K].
      features: modality -> pooled encoder feature [B, D_m].
      split_logits: modality -> fusion-split logits u_m = W_m x_m + b/M [B, K]; they sum to
        `logits`.
    """

    logits: jax.Array
    unimodal_logits: dict[str, jax.Array]
    features: dict[str, jax.Array]
    split_logits: dict[str, jax.Array]


def late_linear_fusion(model: Any, method_name: str) -> LateLinearFusion:
    """The model's fusion head, checked to be the late-linear one that has split logits.

    Raises:
      ValueError: naming the method and the config field, for any other fusion.
    """
    fusion = getattr(model, "fusion", None)
    if not isinstance(fusion, LateLinearFusion):
        raise ValueError(
            f"method {method_name!r} scores modalities with the fusion-split logits "
            "u_m = W_m x_m + b/M, which only the late-linear fusion has: set "
            f"config.model.fusion='late_linear' (got {type(fusion).__name__})"
        )
    return fusion


def split_forward(
    model: Any, inputs: Mapping[str, jax.Array], *, train: bool, method_name: str
) -> SplitOutput:
    """The model's forward pass plus its fusion-split logits.

    Args:
      model: a `MultimodalClassifier` with late-linear fusion.
      inputs: modality -> batch.
      train: train mode (batch statistics, dropout) or eval mode.
      method_name: named in the error for a wrong fusion.

    Returns:
      `SplitOutput`; `split_logits` {m: [B, K]}.
    """
    fusion = late_linear_fusion(model, method_name)
    outputs = model(inputs, train=train)
    return SplitOutput(*outputs, split_logits=fusion.split_logits(outputs.features))


def check_late_linear_params(params: PyTree, modalities: Sequence[str], method_name: str) -> None:
    """Fails at set-up (before any step is traced) when the params lack a late-linear fusion.

    Raises:
      ValueError: naming the method and `config.model.fusion`.
    """
    paths = set(parameter_paths(params))
    wanted = {f"fusion/linear/{m}/kernel" for m in modalities} | {"fusion/bias"}
    if not wanted <= paths:
        raise ValueError(
            f"method {method_name!r} needs the fusion-split logits u_m = W_m x_m + b/M of the "
            "late-linear fusion: set config.model.fusion='late_linear' (the model has no "
            f"{sorted(wanted - paths)})"
        )


# ----------------------------------------------------------------------------- masks


def encoder_masks(
    params: PyTree, modalities: Sequence[str], *, scope: Literal["conv", "encoder"]
) -> dict[str, PyTree]:
    """Per-modality boolean masks of the parameters a scaling method modulates.

    Args:
      params: the model's parameter pytree (paths 'encoders/<m>/...', 'heads/<m>/...').
      modalities: modality names.
      scope: 'conv': 4-D leaves under 'encoders/<m>/' (convolution kernels; the official OGM
        rule "gradient is 4-D"); 'encoder': every leaf under 'encoders/<m>/' or 'heads/<m>/'
        (MLB's `enc_m`, which holds the unimodal head too). The fusion is never included.

    Returns:
      modality -> bool pytree with the structure of `params`.

    Raises:
      ValueError: an unknown scope, or a modality that selects no parameter.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {list(SCOPES)}, got {scope!r}")
    patterns = {m: [f"^encoders/{re.escape(m)}/", f"^heads/{re.escape(m)}/"] for m in modalities}
    if scope == "conv":
        patterns = {m: [p[0]] for m, p in patterns.items()}
    masks = modality_masks(params, patterns)
    if scope == "conv":
        masks = {
            m: jax.tree.map(lambda sel, x: bool(sel) and np.ndim(x) == 4, mask, params)
            for m, mask in masks.items()
        }
        for m, mask in masks.items():
            if not any(jax.tree.leaves(mask)):
                raise ValueError(
                    f"scope 'conv': the encoder of modality {m!r} has no 4-D (convolution) "
                    "parameter; use scope 'encoder'"
                )
    return masks


# ----------------------------------------------------------------------------- scores, k


def ogm_scores(split_logits: Mapping[str, jax.Array], labels: jax.Array) -> dict[str, jax.Array]:
    """S_m: batch *sum* of the softmax probability of the true class (official OGM score).

    Args:
      split_logits: modality -> fusion-split logits [B, K].
      labels: [B] integer labels.

    Returns:
      modality -> float32 [] (gradient-free).
    """
    scores = {}
    for name, logits in split_logits.items():
        probs = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32), axis=-1)
        scores[name] = jnp.sum(jnp.take_along_axis(probs, labels[:, None], axis=-1))
    return scores


def ogm_coefficients(
    scores: Mapping[str, jax.Array | float], *, alpha: float | jax.Array
) -> dict[str, jax.Array]:
    """OGM coefficients k_m from scores S_m (any M >= 2).

    rho_m = S_m / min_{j != m} S_j; k_m = 1 - tanh(alpha * rho_m) if rho_m > 1, else 1. If no
    modality has rho_m > 1 (all scores equal) the first modality gets 1 - tanh(alpha * rho),
    i.e. 1 - tanh(alpha), as the official two-modality code does. Note the use of rho, not
    rho - 1: k jumps from 1 to 1 - tanh(alpha) as rho crosses 1 (METHODS.md §5.4).

    Args:
      scores: modality -> scalar score (ordered; at least two).
      alpha: modulation strength (>= 0), scalar.

    Returns:
      modality -> float32 [] coefficient in (0, 1].
    """
    names = list(scores)
    if len(names) < 2:
        raise ValueError(f"OGM needs at least two modalities, got {names}")
    s = jnp.stack([jnp.asarray(scores[n], jnp.float32) for n in names])  # [M]
    others = jnp.where(jnp.eye(len(names), dtype=bool), jnp.inf, s[None, :])  # [M, M]
    rho = s / jnp.maximum(jnp.min(others, axis=1), _SCORE_FLOOR)  # [M]
    dominant = rho > 1.0
    dominant = dominant.at[0].set(dominant[0] | ~jnp.any(dominant))
    k = jnp.where(dominant, 1.0 - jnp.tanh(alpha * rho), 1.0)
    return {n: k[i] for i, n in enumerate(names)}


# ----------------------------------------------------------------------------- transform


class OGMState(NamedTuple):
    """State of `ogm_gradient_transform` (arrays only: jits, shards and checkpoints).

    Attributes:
      record: the step's scores and applied coefficients in the library's common balancing
        record (`MLBState`: count = updates so far, scores = smoothed_scores = S_m,
        coefficients = the k_m applied, 1 outside the modulation window), so that
        `mlb_jax.balancing.balancing_metrics` logs them as `k/<m>` and `score/<m>`.
      key: uint32 key data of the base PRNG key of the OGM-GE noise.
    """

    record: MLBState
    key: jax.Array


def _value_at(value: ScalarOrSchedule, count: jax.Array) -> jax.Array:
    return value(count) if callable(value) else value


def ogm_gradient_transform(
    modality_masks: Mapping[str, MaskOrFn],
    *,
    alpha: ScalarOrSchedule,
    noise: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """OGM (noise=False) or OGM-GE (noise=True) as an optax transformation.

    For every leaf selected by modality m's mask: g <- k_m g (OGM) or
    g <- k_m g + eps, eps ~ N(0, (std_unbiased(g) + 1e-8)^2) i.i.d. per element (OGM-GE), with
    k from `ogm_coefficients`. Unselected leaves pass unchanged.

    Args:
      modality_masks: modality -> bool pytree with the params' structure (or a callable
        params -> such a pytree); disjoint; at least two modalities. See `encoder_masks`.
      alpha: modulation strength (>= 0), a number or an optax schedule of the update count.
      noise: add OGM-GE's Gaussian noise.
      seed: seed of the base noise key (the key of a step and tensor is derived from it).

    Returns:
      An `optax.GradientTransformationExtraArgs` whose
      `update(updates, state, params=None, *, modality_scores, modulate=True, **extra_args)`
      takes modality -> scalar S_m and a boolean scalar `modulate` (False: the gradients
      pass unchanged and no noise is drawn, e.g. outside the modulation epochs); unknown extra
      arguments are ignored. The state is an `OGMState`.

    Raises:
      ValueError: fewer than two modalities or alpha < 0; at init, masks that do not match the
        params or overlap; at update, missing or unknown modality scores.
    """
    names = list(modality_masks)
    if len(names) < 2:
        raise ValueError(f"ogm_gradient_transform needs at least two modalities, got {names}")
    if not callable(alpha) and float(alpha) < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")

    def init_fn(params: PyTree) -> OGMState:
        _, flat = flat_masks(modality_masks, params)
        check_disjoint(params, flat)
        return OGMState(initial_state(names), jax.random.key_data(jax.random.key(seed)))

    def update_fn(
        updates: PyTree,
        state: OGMState,
        params: PyTree | None = None,
        *,
        modality_scores: Mapping[str, jax.Array],
        modulate: bool | jax.Array = True,
        **extra_args: Any,
    ) -> tuple[PyTree, OGMState]:
        del extra_args
        missing = [n for n in names if n not in modality_scores]
        unknown = [n for n in modality_scores if n not in modality_masks]
        if missing or unknown:
            raise ValueError(
                f"modality_scores must have exactly the masked modalities {names}; "
                f"missing {missing}, unknown {unknown}"
            )
        scores = {n: jnp.asarray(modality_scores[n], jnp.float32) for n in names}
        on = jnp.asarray(modulate, bool)
        count = state.record.count
        k = ogm_coefficients(scores, alpha=_value_at(alpha, count))
        k = {n: jnp.where(on, v, 1.0) for n, v in k.items()}

        treedef, flat = flat_masks(modality_masks, params if params is not None else updates)
        leaves = treedef.flatten_up_to(updates)
        out, modulated = scale_selected(leaves, flat, k)  # modulated: flat indices scaled
        if noise and modulated:
            step_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), count)

            def add_noise(scaled: list[jax.Array]) -> list[jax.Array]:
                # Noise std from the *unscaled* gradient leaves[i]; key per step and tensor.
                return [
                    s + _ge_noise(leaves[i], jax.random.fold_in(step_key, i))
                    for s, i in zip(scaled, modulated)
                ]

            # One cond for all tensors: outside the window no noise is drawn at all.
            noisy = jax.lax.cond(on, add_noise, lambda s: s, [out[i] for i in modulated])
            for i, x in zip(modulated, noisy):
                out[i] = x
        record = MLBState(
            count=optax.safe_increment(count),
            scores=scores,
            smoothed_scores=dict(scores),
            coefficients=k,
        )
        return treedef.unflatten(out), OGMState(record, state.key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _ge_noise(g: jax.Array, key: jax.Array) -> jax.Array:
    """N(0, (std_unbiased(g) + 1e-8)^2) noise shaped like g; std taken of the unscaled g."""
    std = jnp.std(g, ddof=1) if g.size > 1 else jnp.zeros([], g.dtype)
    return (std + NOISE_STD_EPS) * jax.random.normal(key, g.shape, g.dtype)


# ----------------------------------------------------------------------------- method


@dataclasses.dataclass(frozen=True)
class OGM(Method):
    """OGM / OGM-GE (METHODS.md §3.4); works for any M >= 2 (see the module docstring).

    Attributes:
      alpha: modulation strength alpha of k = 1 - tanh(alpha * rho).
      noise: add OGM-GE's Gaussian noise (the 'ogm_ge' registry entry sets it).
      scope: 'conv' (official: conv kernels only) or 'encoder' (MLB: whole encoder + head).
      start_epoch: first modulated epoch (0-based, inclusive).
      end_epoch: last modulated epoch (inclusive); the official default is 0 .. 50.
      noise_seed: seed of the OGM-GE noise keys.
    """

    name: str = "ogm"
    alpha: float = 0.3
    noise: bool = False
    scope: Literal["conv", "encoder"] = "conv"
    start_epoch: int = 0
    end_epoch: int = 50
    noise_seed: int = 0

    def init_state(self, modalities: list[str], num_classes: int) -> PyTree:
        """{'epoch': int32 []}: the current epoch, for the modulation window."""
        del modalities, num_classes
        return {"epoch": jnp.zeros([], jnp.int32)}

    def forward(
        self, model: Any, inputs: Mapping[str, jax.Array], *, train: bool, method_state: PyTree
    ) -> SplitOutput:
        """The model's outputs plus the fusion-split logits (late-linear fusion only)."""
        del method_state
        return split_forward(model, inputs, train=train, method_name=self.name)

    def update_kwargs(
        self, outputs: SplitOutput, labels: jax.Array, method_state: PyTree
    ) -> dict[str, Any]:
        """The batch's scores S_m and whether this epoch is inside the modulation window."""
        epoch = method_state["epoch"]
        return {
            "modality_scores": ogm_scores(outputs.split_logits, labels),
            "modulate": (epoch >= self.start_epoch) & (epoch <= self.end_epoch),
        }

    def gradient_transform(
        self, params: PyTree, patterns: Mapping[str, list[str]]
    ) -> optax.GradientTransformation:
        """`ogm_gradient_transform` over `encoder_masks(params, ..., scope=self.scope)`."""
        modalities = list(patterns)
        check_late_linear_params(params, modalities, self.name)
        return ogm_gradient_transform(
            encoder_masks(params, modalities, scope=self.scope),
            alpha=self.alpha,
            noise=self.noise,
            seed=self.noise_seed,
        )

    def end_of_epoch(self, method_state: PyTree, context: EpochContext) -> PyTree:
        """Advances the epoch counter to the next epoch."""
        del method_state
        return {"epoch": np.asarray(context.epoch + 1, np.int32)}


OGM_FIELDS = ("alpha", "scope", "start_epoch", "end_epoch", "noise_seed")


def _ogm_from_config(config: Any, *, name: str, noise: bool) -> OGM:
    block = config.get("ogm", None)
    block = {} if block is None else dict(block)
    unknown = sorted(set(block) - set(OGM_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown field(s) {unknown} in config.method.ogm; expected {list(OGM_FIELDS)}"
        )
    scope = str(block.get("scope", "conv"))
    if scope not in SCOPES:
        raise ValueError(f"config.method.ogm.scope must be one of {list(SCOPES)}, got {scope!r}")
    alpha = float(block.get("alpha", OGM.alpha))
    if alpha < 0:
        raise ValueError(f"config.method.ogm.alpha must be >= 0, got {alpha}")
    return OGM(
        name=name,
        alpha=alpha,
        noise=noise,
        scope=scope,
        start_epoch=int(block.get("start_epoch", OGM.start_epoch)),
        end_epoch=int(block.get("end_epoch", OGM.end_epoch)),
        noise_seed=int(block.get("noise_seed", OGM.noise_seed)),
        placement=str(config.get("placement", "gradients")),
    )


def make_ogm(config: Any) -> OGM:
    """Builds OGM from `config.method` (block `ogm`: alpha, scope, start/end_epoch)."""
    return _ogm_from_config(config, name="ogm", noise=False)


def make_ogm_ge(config: Any) -> OGM:
    """Builds OGM-GE from `config.method` (the same `ogm` block, plus noise_seed)."""
    return _ogm_from_config(config, name="ogm_ge", noise=True)
