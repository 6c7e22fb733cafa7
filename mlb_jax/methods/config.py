"""One reader for every method: its frozen dataclass from the `config.method` block.

`config.method` holds
  * `name`: the registry name of the method to train;
  * top-level fields (`TOP_LEVEL_FIELDS`): `unimodal_weight` and `placement`, which several
    methods read, MLB's own hyper-parameters `alpha`, `beta_max`, `score`, `score_ema`, and
    `modality` (the one modality of method 'unimodal');
  * one block per method with per-method settings (`config.method.ogm`, `.mslr`, ...).

`method_from_config(cls, config)` builds `cls` from the fields it declares it reads
(`cls.top_level_fields`, and `cls.block_fields` of the block `cls.config_block`), converting
each value to the dataclass field's type, then runs the class's `validate()`. The rules:
  * an unknown field of the chosen method's block, or an unknown top-level field, is refused
    with one line naming `config.method.<block>.<field>` and the allowed fields;
  * a shared top-level field (`SHARED_FIELDS`) that the chosen method does not read must keep
    its default (MLB's dataclass default): a different value would silently do nothing, so it
    is refused with the reason (e.g. AGM needs raw gradients, so `placement='updates'`);
  * MLB's hyper-parameters and the blocks of other methods are not read and not checked: one
    config file serves a comparison of methods (`mlb_jax.compare` runs joint, multiloss and
    mlb on a dataset config that sets MLB's alpha and beta_max).
Defaults live in one place, the dataclasses; `default_block(cls)` turns them into a config
block for mlb_jax/config_base.py.
"""

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import ml_collections

from mlb_jax.methods.base import Method

M = TypeVar("M", bound=Method)

# Read by several methods; a method that does not read one refuses a non-default value.
SHARED_FIELDS = ("unimodal_weight", "placement", "modality")
# MLB's hyper-parameters, kept at the top level of config.method (the paper's names).
MLB_FIELDS = ("alpha", "beta_max", "score", "score_ema")
TOP_LEVEL_FIELDS = ("unimodal_weight", *MLB_FIELDS, "placement", "modality")


def _plain(value: Any) -> Any:
    """A ConfigDict (or FrozenConfigDict) as a plain dict; anything else unchanged."""
    return value.to_dict() if hasattr(value, "to_dict") else value


def _convert(value: Any, kind: Any, where: str) -> Any:
    """`value` as the dataclass field type `kind`, or ValueError naming `where`."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be True or False, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        # tuple[tuple[str, float], ...]: a mapping in the config (e.g. MSLR's init_lr).
        value = _plain(value)
        if value is None:
            return ()
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must be a mapping name -> value, got {value!r}")
        key_kind, value_kind = typing.get_args(args[0])
        return tuple(
            (_convert(k, key_kind, f"{where} key"), _convert(v, value_kind, f"{where}.{k}"))
            for k, v in value.items()
        )
    raise TypeError(f"no config conversion for the field type {kind!r} of {where}")


def _to_config(value: Any) -> Any:
    """A dataclass default as a config value (the inverse of `_convert` for mappings)."""
    if isinstance(value, tuple) and all(isinstance(x, tuple) and len(x) == 2 for x in value):
        return dict(value)
    return value


def _top_level_defaults() -> dict[str, Any]:
    """The defaults of the top-level fields: the dataclass defaults of MLB and Unimodal."""
    # Imported here, not at module level: those modules build their methods with this one.
    from mlb_jax.methods.mlb import MLB
    from mlb_jax.methods.unimodal import Unimodal

    return {
        field: getattr(MLB if field != "modality" else Unimodal, field)
        for field in TOP_LEVEL_FIELDS
    }


def _known_blocks() -> list[str]:
    """The names of every registered method's block (config.method.<block>)."""
    # Imported here, not at module level: the registry imports every method module.
    from mlb_jax.methods import BLOCKS

    return sorted(BLOCKS)


def method_from_config(cls: type[M], config: Any, **fixed: Any) -> M:
    """Builds and validates the method `cls` from `config.method`.

    Args:
      cls: the method's dataclass, declaring `config_block`, `block_fields` and
        `top_level_fields` (see `mlb_jax.methods.base.Method`).
      config: the `config.method` ConfigDict (or a dict).
      **fixed: settings the registry entry fixes (e.g. name='ogm_ge', noise=True).

    Returns:
      The frozen method; `dataclasses.asdict` of it records every setting it uses.

    Raises:
      ValueError: one line naming the config field for an unknown field (with the allowed
        ones), a value of the wrong type, a value `validate()` rejects, or a shared top-level
        field the method does not read set away from its default.
    """
    top = {k: v for k, v in _plain(config).items() if k != "name"}
    blocks = _known_blocks()
    unknown = sorted(set(top) - set(TOP_LEVEL_FIELDS) - set(blocks))
    if unknown:
        raise ValueError(
            f"unknown field {', '.join(f'config.method.{f}' for f in unknown)}; allowed: name, "
            f"{', '.join(TOP_LEVEL_FIELDS)} and the method blocks {', '.join(blocks)}"
        )
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in cls.top_level_fields:
        if field in top:
            values[field] = _convert(top[field], hints[field], f"config.method.{field}")
    if cls.config_block is not None:
        block = _plain(top.get(cls.config_block)) or {}
        unknown = sorted(set(block) - set(cls.block_fields))
        if unknown:
            path = f"config.method.{cls.config_block}"
            raise ValueError(
                f"unknown field {', '.join(f'{path}.{f}' for f in unknown)}; "
                f"allowed: {', '.join(cls.block_fields)}"
            )
        for field, value in block.items():
            values[field] = _convert(
                value, hints[field], f"config.method.{cls.config_block}.{field}"
            )
    method = cls(**values, **fixed)  # validate() runs in __post_init__
    defaults = _top_level_defaults()
    for field in SHARED_FIELDS:
        if field not in cls.top_level_fields and field in top and top[field] != defaults[field]:
            raise ValueError(
                f"config.method.{field}={top[field]!r} has no effect with method "
                f"{method.name!r} ({cls.unread_because[field]}): remove it"
            )
    return method


def default_block(cls: type[Method]) -> ml_collections.ConfigDict:
    """The block config.method.<cls.config_block> holding the dataclass defaults of `cls`.

    Args:
      cls: a method dataclass with `block_fields`.

    Returns:
      A ConfigDict field -> default value (mappings such as MSLR's init_lr as dicts).
    """
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    return ml_collections.ConfigDict({f: _to_config(defaults[f]) for f in cls.block_fields})
