"""The names of the arrays in a batch's ``inputs`` that are not modalities: sequence lengths.

A batch's ``inputs`` maps each modality name to its array; a ``sequence`` modality ``m`` (float32
``[B, L, D]``, zero-padded after each example's valid steps) also has ``inputs[length_key(m)]``,
int32 ``[B]``: how many leading steps of each example are valid. Modality names are identifiers
(letters, digits, '_'), so a key with ``LENGTH_SUFFIX`` never collides with one. This module is
imported by the data pipeline (which writes the key) and the models (which read it); it imports
nothing, so neither drags the other's dependencies in.
"""

LENGTH_SUFFIX = ".length"


def length_key(modality: str) -> str:
    """The ``inputs`` key of a sequence modality's valid lengths, e.g. ``'imu.length'``."""
    return modality + LENGTH_SUFFIX
