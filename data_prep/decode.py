"""Decode listed examples into the on-disk cache, in spawned worker processes, with a progress bar.

This is the whole import path of a decode worker: it imports the standard library, numpy, tqdm
and `data_prep.media` (PyAV, librosa, scipy), never TensorFlow, TFDS or JAX. The converters
call `decode_all` from inside a TFDS build, in a process where TensorFlow (and often JAX) have
started threads; forking such a process can deadlock the child (JAX warns "os.fork() was
called ..."). So the workers are *spawned* (a fresh interpreter, no inherited threads) and
started without re-running the CLI's main module (which imports TensorFlow: seconds and ~0.7
GB per worker); each imports only this module when it unpickles its first task.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import multiprocessing
import os
import pathlib
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import tqdm

from data_prep import media

# Start method of the decode workers: never "fork" (see the module docstring).
START_METHOD = "spawn"


@dataclasses.dataclass(frozen=True)
class Example:
    """One example to convert, as listed from the raw layout.

    Its files are given either as `audio` and `video` (the two-modality datasets: the files
    of modalities 'audio' and 'video') or as `files` (any modalities); `files` always holds
    them after construction.

    Attributes:
        split: split name.
        id: unique within the split; the TFDS key and the stored ``id``.
        label: class index.
        audio: file whose (first) audio track is used (shorthand for ``files['audio']``).
        video: file whose (first) video track is used; may be the same file (shorthand for
            ``files['video']``).
        start_s: start of the event segment in seconds (AVE), else 0; audio and video files.
        end_s: end of the event segment in seconds: audio [start_s, end_s), frames
            [start_s, end_s]; None = to the end of the file.
        skip_reason: set when the listing itself excludes the example (it is reported as
            skipped, never decoded).
        files: modality name -> the file its array is decoded from (how: the `decode_all`
            settings of that modality).
    """

    split: str
    id: str
    label: int
    audio: pathlib.Path | None = None
    video: pathlib.Path | None = None
    start_s: float = 0.0
    end_s: float | None = None
    skip_reason: str | None = None
    files: Mapping[str, pathlib.Path] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self):
        pairs = (("audio", self.audio), ("video", self.video))
        shorthand = {name: path for name, path in pairs if path is not None}
        if shorthand and self.files:
            raise ValueError("Example takes audio= / video= or files=, not both")
        object.__setattr__(self, "files", dict(self.files or shorthand))


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened to one example.

    Attributes:
        example: the example.
        status: 'decoded' (now), 'cached' (by an earlier run), 'skipped' (excluded by a rule of
            the dataset, e.g. a UCF101 clip without audio) or 'unreadable'.
        reason: why it was skipped or unreadable (names the file).
        cache_file: the decoded arrays, for 'decoded' and 'cached'.
        error: class name of the error that made it unreadable or skipped (e.g.
            'TooFewFramesError'), so the converter can say which of its options fixes it.
    """

    example: Example
    status: Literal["decoded", "cached", "skipped", "unreadable"]
    reason: str = ""
    cache_file: pathlib.Path | None = None
    error: str = ""


def decode_all(
    examples: Sequence[Example],
    *,
    audio: media.AudioSettings | None = None,
    frames: media.FrameSettings | None = None,
    settings: Mapping[str, media.Settings] | None = None,
    cache_dir: pathlib.Path,
    workers: int,
    skip_errors: tuple[type[media.MediaError], ...] = (),
    progress: bool = True,
    desc: str = "decoding",
) -> list[Outcome]:
    """Decodes every example into `cache_dir` (or finds it there), in parallel.

    The result does not depend on `workers`: every example is decoded by the same function
    from the same files, and the outcomes come back in the order of `examples`.

    Args:
        examples: what to decode; each has a file for every modality of `settings`.
        audio: waveform -> spectrogram settings of modality 'audio' (with `frames`: the
            two-modality shorthand for ``settings={'audio': audio, 'video': frames}``).
        frames: video -> frames settings of modality 'video'.
        settings: modality name -> how its file becomes its array (`media.decode`).
        cache_dir: where decoded examples are cached, one ``.npz`` per example (one array per
            modality, by name).
        workers: decode processes; 1 (or a single example) decodes in this process.
        skip_errors: media errors that mean "excluded by the dataset's rules".
        progress: show a progress bar (stderr).
        desc: progress-bar label.

    Returns:
        One `Outcome` per example, in the order of `examples`.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = functools.partial(
        decode_example,
        settings=_settings(audio, frames, settings),
        cache_dir=cache_dir,
        skip_errors=skip_errors,
    )
    bar = tqdm.tqdm(total=len(examples), desc=desc, unit="clip", disable=not progress)
    with bar:
        if workers <= 1 or len(examples) <= 1:
            return [_advance(bar, work(e)) for e in examples]
        with process_pool(workers) as pool:
            # Chunks amortise the inter-process round trip but stay small enough to keep every
            # worker busy to the end and the bar moving.
            chunk = max(1, min(16, len(examples) // (4 * workers)))
            with without_main_module():  # map() submits every chunk, so all workers start here
                results = pool.map(work, examples, chunksize=chunk)
            return [_advance(bar, o) for o in results]


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    """A pool of `workers` decode processes started with `START_METHOD` (never fork).

    Workers start lazily, when tasks are submitted; submit inside `without_main_module` so
    that they do not re-import the caller's main module.

    Args:
        workers: number of processes.

    Yields:
        The executor; shut down (waiting for its workers) on exit.
    """
    context = multiprocessing.get_context(START_METHOD)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield pool


@contextlib.contextmanager
def without_main_module() -> Iterator[None]:
    """Processes started in this block do not re-run the main module.

    A spawned child re-imports the parent's ``__main__`` (by module name, or by path for a
    script) so that functions defined there can be unpickled. A converter's ``__main__`` is its
    CLI module, which imports TensorFlow, while the decode tasks only reference this module. A
    stand-in ``__main__`` without ``__spec__`` or ``__file__`` tells multiprocessing there is
    nothing to re-import; the real one is back as soon as the workers are started.
    """
    real = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = real


def _advance(bar: tqdm.tqdm, outcome: Outcome) -> Outcome:
    bar.update()
    return outcome


def _settings(
    audio: media.AudioSettings | None,
    frames: media.FrameSettings | None,
    settings: Mapping[str, media.Settings] | None,
) -> dict[str, media.Settings]:
    """The per-modality settings, from `settings` or the audio / frames shorthand."""
    if settings is None:
        if audio is None or frames is None:
            raise TypeError("pass settings=, or both audio= and frames=")
        return {"audio": audio, "video": frames}
    if audio is not None or frames is not None:
        raise TypeError("pass settings= or audio= / frames=, not both")
    return dict(settings)


def decode_example(
    example: Example,
    *,
    audio: media.AudioSettings | None = None,
    frames: media.FrameSettings | None = None,
    settings: Mapping[str, media.Settings] | None = None,
    cache_dir: pathlib.Path,
    skip_errors: tuple[type[media.MediaError], ...] = (),
) -> Outcome:
    """Decodes one example into the cache, unless an earlier run did.

    The cache file name hashes the settings, the files, the window and the files' size and
    modification time, so a changed file or setting is decoded again. Unreadable files are
    not cached: a re-run retries them. Rule-based skips are cached as a ``.skip`` file.

    Args:
        example: the example.
        audio: as in `decode_all`.
        frames: as in `decode_all`.
        settings: as in `decode_all`.
        cache_dir: the cache.
        skip_errors: as in `decode_all`.

    Returns:
        The example's `Outcome`; never raises for a bad file.
    """
    settings = _settings(audio, frames, settings)
    if example.skip_reason is not None:
        return Outcome(example, "skipped", example.skip_reason)
    missing = [name for name in settings if name not in example.files]
    if missing:  # a listing bug, not a bad file
        raise ValueError(f"example {example.id!r} has no file for modality {missing[0]!r}")
    cache_file = cache_dir / f"{_cache_key(example, settings)}.npz"
    skip_file = cache_file.with_suffix(".skip")
    if cache_file.exists():
        return Outcome(example, "cached", cache_file=cache_file)
    if skip_file.exists():
        return Outcome(example, "skipped", skip_file.read_text())
    arrays = {}
    path = None
    try:
        for name, how in settings.items():
            path = example.files[name]
            arrays[name] = media.decode(
                path, how, column=name, start_s=example.start_s, end_s=example.end_s
            )
    except skip_errors as e:
        reason = str(e)
        atomic_write(skip_file, lambda f: f.write(reason.encode()))
        return Outcome(example, "skipped", reason, error=type(e).__name__)
    except media.MediaError as e:
        return Outcome(example, "unreadable", str(e), error=type(e).__name__)
    except Exception as e:  # a decoder bug on one file must be counted, not fatal
        return Outcome(
            example, "unreadable", f"{path}: {type(e).__name__}: {e}", error=type(e).__name__
        )
    atomic_write(cache_file, lambda f: np.savez(f, **arrays))
    return Outcome(example, "decoded", cache_file=cache_file)


def _cache_key(example: Example, settings: Mapping[str, media.Settings]) -> str:
    def stat(path: pathlib.Path) -> tuple[int, int] | None:
        try:
            s = path.stat()
        except OSError:
            return None
        return s.st_size, s.st_mtime_ns

    parts = (
        [
            (name, how, str(example.files[name]), stat(example.files[name]))
            for name, how in settings.items()
        ],
        example.start_s,
        example.end_s,
    )
    return hashlib.sha1(repr(parts).encode()).hexdigest()


def atomic_write(path: pathlib.Path, write: Callable[[Any], Any]) -> None:
    """Writes through a temporary file and renames it, so `path` is complete or absent.

    Args:
        path: the file to write.
        write: called with the open binary temporary file.
    """
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
