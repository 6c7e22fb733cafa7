"""Search dimensions of a hyper-parameter: how a point of the unit interval becomes a value.

A method declares its search space next to its settings (`Method.search_space`: setting ->
dimension); `mlb_jax.tune` draws quasi-random points in [0, 1)^D and maps each coordinate
through its dimension. Dimensions are pure: `value(u, default)` with `default` the config's
value, which only `Scaled` uses (a learning rate is tuned around the config's own).
"""

import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class LogUniform:
    """A float log-uniform in [low, high] (0 < low < high)."""

    low: float
    high: float
    log_scale = True

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ValueError(
                f"{type(self).__name__} needs 0 < low < high, got {self.low}, {self.high}"
            )

    def value(self, u: float, default: Any = None) -> float:
        """The value at `u` in [0, 1): low * (high / low) ** u."""
        del default
        return float(self.low * math.exp(u * math.log(self.high / self.low)))


@dataclasses.dataclass(frozen=True)
class Scaled(LogUniform):
    """The config's value times a factor log-uniform in [low, high] (e.g. a learning rate)."""

    def value(self, u: float, default: Any = None) -> float:
        """`default` * low * (high / low) ** u."""
        if isinstance(default, bool) or not isinstance(default, int | float) or default <= 0:
            raise ValueError(f"Scaled needs a positive config value to scale, got {default!r}")
        return float(default) * super().value(u)


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of `values`, each with probability 1 / len(values)."""

    values: tuple[Any, ...]
    log_scale = False

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("Choice needs at least one value")

    def value(self, u: float, default: Any = None) -> Any:
        """values[floor(u * len(values))]."""
        del default
        return self.values[min(int(u * len(self.values)), len(self.values) - 1)]


Dimension = LogUniform | Scaled | Choice


def parse_dimension(spec: str) -> Dimension:
    """A dimension from its command-line form.

    ``log:LOW:HIGH`` (LogUniform), ``scaled:LOW:HIGH`` (Scaled) or ``A|B|C`` (Choice; numbers
    become ints or floats, ``true``/``false`` booleans, anything else stays a string).

    Raises:
      ValueError: for a malformed spec (the message shows the three forms).
    """
    kind, _, rest = spec.partition(":")
    forms = "write log:LOW:HIGH, scaled:LOW:HIGH or A|B|C"
    if kind in ("log", "scaled"):
        try:
            low, high = (float(x) for x in rest.split(":"))
        except ValueError:
            raise ValueError(f"search dimension {spec!r}: {forms}") from None
        return (LogUniform if kind == "log" else Scaled)(low, high)
    if ":" in spec or not spec:
        raise ValueError(f"search dimension {spec!r}: {forms}")
    return Choice(tuple(_literal(v) for v in spec.split("|")))


def _literal(text: str) -> Any:
    """'2' -> 2, '0.5' -> 0.5, 'true' -> True, anything else the string itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
