"""Shared machinery of the raw-media converters: the builder base, accounting, the CLI.

A converter is a `ConvertingBuilder` subclass (a TFDS builder reading the raw download from
``manual_dir``) that only lists its examples (`Example`: split, id, label, media files, event
window). This module has them decoded (`data_prep.decode`: spawned worker processes, progress
bar, an on-disk cache written atomically, so a re-run after a crash decodes only what is
missing), counts unreadable and skipped files, refuses to write the dataset when too many files
are unreadable (naming the options that fix them), hands the cached examples to TFDS (which
writes atomically) and writes a report beside the output. `main` wraps a converter's CLI so
that bad input ends in one line.
"""

from __future__ import annotations

import abc
import argparse
import collections
import dataclasses
import functools
import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import absl.logging
import numpy as np
from etils import epath

from data_prep import media
from data_prep.decode import Example, Outcome, decode_all
from mlb_jax import paths
from mlb_jax.data._tf import import_tfds
from mlb_jax.data.builder import AudioVideoBuilder, AudioVideoConfig, prepare
from mlb_jax.data.schema import DataError, ModalitySpec, load_meta

# Split names of every converted dataset (the same as mlb_jax.data.synthetic's).
TRAIN, VALIDATION, TEST = "train", "validation", "test"

# Model input size of the reference code (Resize((224, 224)) / RandomResizedCrop(224)): what
# training crops and evaluation resizes produce (config.data.augment.size), not what is stored.
REFERENCE_FRAME_SIZE = (224, 224)
# Default stored (H, W): 256 pixels on the short side with the source's 4:3 aspect (CREMA-D
# 480x360 flv, most AVE clips), so RandomResizedCrop's area and aspect draws, relative to the
# stored frame, are those of the reference, which crops the decoded source frame; UCF101's
# 320x240 sources are kept at their own size (ucf51.DEFAULT_FRAME_SIZE). --frame_size=224 (or
# smaller) for CPU-sized work.
DEFAULT_FRAME_SIZE = (256, 341)

REPORT_NAME = "conversion_report.json"
# <data_dir>/<CACHE_NAME>/<dataset>/ holds the decoded examples until the dataset is written.
CACHE_NAME = "decode_cache"


class ConversionError(DataError):
    """The raw data cannot be converted as a whole (too many unreadable files, empty split)."""


@dataclasses.dataclass(kw_only=True, eq=False)
class ConverterConfig(AudioVideoConfig):
    """A converted dataset: the base config plus the preprocessing that produced it.

    ``modalities`` is derived from `modality_settings` (`modality_spec` of each); without
    them the dataset has the two modalities 'audio' (spectrogram of `audio.shape`) and 'video'
    (frames of `frames.shape`).

    Attributes:
        audio: waveform -> spectrogram settings (of 'audio', or the defaults of any audio
            modality).
        frames: video -> frames settings (of 'video', or the defaults of any video modality).
        modality_settings: modality name -> how its file becomes its array (`media.decode`);
            empty = ``{'audio': audio, 'video': frames}``.
    """

    audio: media.AudioSettings
    frames: media.FrameSettings
    modality_settings: Mapping[str, media.Settings] = dataclasses.field(default_factory=dict)
    modalities: dict[str, ModalitySpec] = dataclasses.field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not self.modality_settings:
            self.modality_settings = {"audio": self.audio, "video": self.frames}
        self.modality_settings = dict(self.modality_settings)
        self.modalities = {
            name: modality_spec(settings) for name, settings in self.modality_settings.items()
        }


def modality_spec(settings: media.Settings) -> ModalitySpec:
    """The stored kind, shape and dtype of a modality decoded with `settings`.

    `media.AudioSettings` -> spectrogram ``[F, T]``; `media.FrameSettings` -> uint8 RGB frames
    ``[T, H, W, 3]``; `media.SequenceSettings` -> sequence ``[T_max, D]``;
    `media.ArrayFrameSettings` -> frames ``[T, H, W, C]`` of its dtype.
    """
    if isinstance(settings, media.AudioSettings):
        return ModalitySpec("spectrogram", settings.shape)
    if isinstance(settings, media.SequenceSettings):
        return ModalitySpec("sequence", settings.shape)
    if isinstance(settings, media.ArrayFrameSettings):
        return ModalitySpec("frames", settings.shape, settings.dtype)
    return ModalitySpec("frames", settings.shape)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How to run a conversion (not part of the dataset's identity).

    Attributes:
        workers: decode processes; 1 decodes in this process.
        max_unreadable_fraction: refuse to write the dataset when a larger fraction of the
            listed examples cannot be read.
        keep_cache: keep the decoded examples after a successful write (to convert another
            fold/split of the same raw data without decoding again).
        progress: show a progress bar (stderr).
    """

    workers: int = max(1, os.cpu_count() or 1)
    max_unreadable_fraction: float = 0.05
    keep_cache: bool = False
    progress: bool = True


class ConvertingBuilder(AudioVideoBuilder):
    """Base of the converters: decode the listed examples in parallel, check, then write.

    A subclass sets ``name``, ``MANUAL_DOWNLOAD_INSTRUCTIONS`` and implements
    `list_examples(raw_dir)`; it may set `SKIP_ERRORS`, the media errors that its dataset's
    rules exclude rather than count as unreadable, and override `fix_hints` to name the CLI
    options that fix a kind of unreadable file.
    """

    SKIP_ERRORS: ClassVar[tuple[type[media.MediaError], ...]] = ()

    def __init__(self, *, run: RunOptions | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.run = run or RunOptions()
        self._report: dict[str, Any] | None = None
        self._cache_dir: pathlib.Path | None = None

    @abc.abstractmethod
    def list_examples(self, raw_dir: pathlib.Path) -> list[Example]:
        """Lists the examples of every split from the raw download.

        Raises:
            DataError: the layout or a split file is wrong (one line: what and how to fix).
        """

    def fix_hints(self) -> dict[str, str]:
        """What fixes each kind of unreadable file, for the error message.

        Returns:
            Error class name (`Outcome.error`, e.g. 'TooFewFramesError') -> a phrase that
            follows "<n> of them" in the message: what is wrong and which options fix it.
            The base class knows no dataset-specific fix and returns {}.
        """
        return {}

    @property
    def report_path(self) -> epath.Path:
        """``<data_dir>/<name>/<config>/conversion_report.json``, beside the version dir."""
        return epath.Path(self.data_dir_root) / self.name / self.builder_config.name / REPORT_NAME

    def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
        """Converts (unless the dataset exists), then writes the report and drops the cache."""
        final_dir = epath.Path(self.data_dir)
        super().download_and_prepare(*args, **kwargs)
        if self._report is None:  # TFDS found the finished dataset: nothing was converted
            print(f"{self.name}/{self.builder_config.name}: already converted in {final_dir}")
            return
        self._report.update(status="ok", output=str(final_dir))
        write_json(self.report_path, self._report)
        if self._cache_dir is not None and not self.run.keep_cache:
            shutil.rmtree(self._cache_dir, ignore_errors=True)
            if not any(self._cache_dir.parent.iterdir()):  # no other dataset's cache
                self._cache_dir.parent.rmdir()
        print(format_report(self._report, self.report_path))

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[Any]]:
        try:
            raw_dir = pathlib.Path(dl_manager.manual_dir)
        except AssertionError as e:  # TFDS says "missing or empty" in several lines
            raise DataError(
                f"{self.name}: the raw directory (manual_dir) is missing or empty: pass the "
                "unpacked download (layout in data_prep/README.md)"
            ) from e
        examples = self.list_examples(raw_dir)
        self._cache_dir = decode_cache_dir(self.data_dir_root, self.name)
        start = time.time()
        outcomes = decode_all(
            examples,
            settings=self.builder_config.modality_settings,
            cache_dir=self._cache_dir,
            workers=self.run.workers,
            skip_errors=self.SKIP_ERRORS,
            progress=self.run.progress,
            desc=f"{self.name}/{self.builder_config.name}",
        )
        report = make_report(
            outcomes,
            f"{self.name}/{self.builder_config.name}",
            self.builder_config,
            raw_dir,
            self.run,
        )
        report["decode_seconds"] = round(time.time() - start, 2)
        try:
            check(report, self.fix_hints())
        except ConversionError:
            write_json(self.report_path, {**report, "status": "failed"})
            raise
        self._report = report
        by_split = collections.defaultdict(list)
        for o in outcomes:
            if o.cache_file is not None:
                by_split[o.example.split].append(o)
        return {split: self._generate_examples(by_split[split]) for split in report["splits"]}

    def _generate_examples(self, outcomes: Sequence[Outcome]) -> Iterator[tuple[str, dict]]:
        for o in outcomes:
            with np.load(o.cache_file) as arrays:
                example = {"id": o.example.id, "label": o.example.label}
                for name, spec in self.builder_config.modalities.items():
                    example[name] = spec.encode(arrays[name])
                yield o.example.id, example


def write_json(path: paths.PathLike, data: dict[str, Any]) -> None:
    """Writes ``data`` as indented JSON atomically (`paths.write_atomic`), creating the folder."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    paths.write_atomic(path, json.dumps(data, indent=1))


def decode_cache_dir(data_dir_root: paths.PathLike, name: str) -> pathlib.Path:
    """Where the decoded clips of dataset `name` are cached: ``<out_dir>/decode_cache/<name>``.

    The decode workers write one file per clip and the builder reads them all back: local
    work. With an ``--out_dir`` URL (``gs://...``) the cache is on this machine instead, in
    ``~/.cache/mlb_jax/decode_cache/<name>``.
    """
    if paths.is_local(data_dir_root):
        root = pathlib.Path(data_dir_root)
    else:
        root = pathlib.Path.home() / ".cache" / "mlb_jax"
    return root / CACHE_NAME / name


# --- Accounting -----------------------------------------------------------------------------


def make_report(
    outcomes: Sequence[Outcome],
    dataset: str,
    config: ConverterConfig,
    raw_dir: pathlib.Path,
    run: RunOptions,
) -> dict[str, Any]:
    """The conversion report (JSON-able): counts per split and class, skipped, unreadable.

    Args:
        outcomes: one per listed example.
        dataset: ``<name>/<config>``.
        config: class names and settings.
        raw_dir: the raw download.
        run: the unreadable-fraction limit.

    Returns:
        Keys ``dataset``, ``raw_dir``, ``settings``, ``splits`` ({split: {'examples': n,
        'per_class': {class: n}}}), ``examples``, ``decoded``, ``from_cache``, ``skipped`` and
        ``unreadable`` (lists of {'split', 'id', 'reason', 'error'}; 'error' is the error's
        class name, '' when unknown), ``unreadable_fraction``,
        ``max_unreadable_fraction``.
    """
    status = collections.Counter(o.status for o in outcomes)
    splits: dict[str, Any] = {}
    for o in outcomes:
        entry = splits.setdefault(o.example.split, {"examples": 0, "per_class": {}})
        if o.cache_file is not None:
            entry["examples"] += 1
            name = config.class_names[o.example.label]
            entry["per_class"][name] = entry["per_class"].get(name, 0) + 1
    for entry in splits.values():  # class order, zeros included
        entry["per_class"] = {c: entry["per_class"].get(c, 0) for c in config.class_names}

    def listed(kind: str) -> list[dict[str, str]]:
        return [
            {"split": o.example.split, "id": o.example.id, "reason": o.reason, "error": o.error}
            for o in outcomes
            if o.status == kind
        ]

    return {
        "dataset": dataset,
        "raw_dir": str(raw_dir),
        "settings": {
            "audio": dataclasses.asdict(config.audio),
            "frames": dataclasses.asdict(config.frames),
            "modalities": {
                name: {
                    "kind": spec.kind,
                    "shape": list(spec.shape),
                    "dtype": spec.dtype,
                    "from": type(config.modality_settings[name]).__name__,
                    **dataclasses.asdict(config.modality_settings[name]),
                }
                for name, spec in config.modalities.items()
            },
        },
        "splits": splits,
        "examples": status["decoded"] + status["cached"],
        "decoded": status["decoded"],
        "from_cache": status["cached"],
        "skipped": listed("skipped"),
        "unreadable": listed("unreadable"),
        "unreadable_fraction": status["unreadable"] / max(1, len(outcomes)),
        "max_unreadable_fraction": run.max_unreadable_fraction,
    }


def check(report: dict[str, Any], fix_hints: Mapping[str, str] | None = None) -> None:
    """Raises `ConversionError` if too many files are unreadable or a split is empty.

    Args:
        report: from `make_report`.
        fix_hints: error class name -> what is wrong and which options fix it (see
            `ConvertingBuilder.fix_hints`); named in the message for the errors that occurred.

    Raises:
        ConversionError: one line: how many, the first reason, and what to do.
    """
    bad = report["unreadable"]
    if report["unreadable_fraction"] > report["max_unreadable_fraction"]:
        total = report["examples"] + len(bad) + len(report["skipped"])
        raise ConversionError(
            f"{len(bad)} of {total} examples are unreadable ({report['unreadable_fraction']:.1%}"
            f" > --max_unreadable_fraction={report['max_unreadable_fraction']:g}); first: "
            f"{bad[0]['reason']} -- {_fixes(bad, fix_hints)}fix or remove the files listed in "
            "the report, or raise --max_unreadable_fraction; nothing was written"
        )
    for split, entry in report["splits"].items():
        if entry["examples"] == 0:
            in_split = [u for u in bad if u["split"] == split]
            raise ConversionError(
                f"split {split!r} has no readable example (see the report): "
                f"{_fixes(in_split, fix_hints)}check the raw files of that split; nothing was "
                "written"
            )


def _fixes(unreadable: Sequence[dict[str, str]], fix_hints: Mapping[str, str] | None) -> str:
    """'<n> of them <hint>; otherwise ' per hinted error kind present, in order of appearance."""
    counts = collections.Counter(u.get("error", "") for u in unreadable)
    hinted = [f"{n} of them {fix_hints[e]}" for e, n in counts.items() if e in (fix_hints or {})]
    return "".join(f"{h}; " for h in hinted) + ("otherwise " if hinted else "")


def format_report(report: dict[str, Any], path: pathlib.Path) -> str:
    """A few lines for the terminal: examples per split and class, problems, where it went."""
    lines = [
        f"{report['dataset']}: {report['examples']} examples -> {report.get('output', '-')} "
        f"(decoded {report['decoded']}, from cache {report['from_cache']}, "
        f"{report['decode_seconds']:.1f} s decoding)"
    ]
    for split, entry in report["splits"].items():
        counts = list(entry["per_class"].values())
        lines.append(
            f"  {split:<10} {entry['examples']:>6} examples, per class min {min(counts)} / "
            f"max {max(counts)}, {sum(1 for n in counts if n)} of {len(counts)} classes"
        )
    for kind in ("skipped", "unreadable"):
        listed = report[kind]
        if listed:
            lines.append(f"  {kind}: {len(listed)}, e.g. {listed[0]['reason']}")
    lines.append(f"  report: {path}")
    return "\n".join(lines)


# --- Command line ---------------------------------------------------------------------------


def frame_size(text: str) -> tuple[int, int]:
    """Parses ``--frame_size``: ``224`` (square) or ``<height>x<width>``."""
    try:
        sizes = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        sizes = ()
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use e.g. 224 or 112x160")
    return sizes


def fraction(text: str) -> float:
    """Parses a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1]")
    return value


def positive_int(text: str) -> int:
    """Parses an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def parser(
    description: str,
    *,
    raw_dir: bool = True,
    default_frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE,
) -> argparse.ArgumentParser:
    """An argument parser with the flags every converter has.

    ``--frame_size`` defaults to ``default_frame_size`` ((H, W) pixels).
    """
    p = argparse.ArgumentParser(description=description)
    if raw_dir:
        p.add_argument(
            "--raw_dir",
            required=True,
            type=pathlib.Path,
            help="the unpacked raw download (layout in data_prep/README.md)",
        )
    p.add_argument(
        "--out_dir",
        required=True,
        type=paths.as_path,
        help="TFDS data_dir, local or a URL (gs://...); the dataset goes to "
        "<out_dir>/<name>/<config>/<version>",
    )
    p.add_argument(
        "--frame_size",
        type=frame_size,
        default=default_frame_size,
        help="stored frame size, 224 or HxW (default: "
        f"{default_frame_size[0]}x{default_frame_size[1]}, large enough to crop 224 from)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=RunOptions.workers,
        help="decode processes (default: all cores)",
    )
    p.add_argument(
        "--max_unreadable_fraction",
        type=fraction,
        default=RunOptions.max_unreadable_fraction,
        help="fail if a larger fraction of the examples cannot be read (default 0.05)",
    )
    p.add_argument(
        "--keep_cache",
        action="store_true",
        help="keep <out_dir>/decode_cache (~/.cache/mlb_jax/decode_cache for a URL --out_dir) "
        "after success (to convert another "
        "fold/split without decoding again)",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def run_options(args: argparse.Namespace) -> RunOptions:
    """The `RunOptions` of parsed `parser` flags."""
    return RunOptions(
        workers=args.workers,
        max_unreadable_fraction=args.max_unreadable_fraction,
        keep_cache=args.keep_cache,
        progress=not args.no_progress,
    )


def sized_name(
    base: str, size: tuple[int, int], default: tuple[int, int] = DEFAULT_FRAME_SIZE
) -> str:
    """Config name: `base`, plus ``_<H>x<W>`` when frames are not the dataset's default size."""
    return base if tuple(size) == tuple(default) else f"{base}_{size[0]}x{size[1]}"


def convert(
    builder_cls: type[ConvertingBuilder],
    config: ConverterConfig,
    *,
    raw_dir: pathlib.Path,
    out_dir: paths.PathLike,
    run: RunOptions,
) -> epath.Path:
    """Converts a raw dataset (or finds it converted) and returns its version directory.

    Raises:
        DataError: `raw_dir` is not a directory, or the builder's checks failed.
    """
    if not raw_dir.is_dir():
        raise DataError(
            f"raw directory {raw_dir} does not exist: pass the unpacked download "
            f"({builder_cls.name} layout in data_prep/README.md)"
        )
    if not run.progress:
        import_tfds().disable_progress_bar()  # TFDS's bars are global to the process
    version_dir = prepare(
        functools.partial(builder_cls, run=run),
        data_dir=out_dir,
        config=config,
        manual_dir=raw_dir,
    )
    # A finished dataset is reused: one written by an older converter under the same name
    # (e.g. 224x224 frames, the default before frames were stored large enough to crop) must
    # not pass for what was asked.
    stored = load_meta(version_dir).modalities
    for name, spec in config.modalities.items():
        if name not in stored:
            raise DataError(
                f"{version_dir} has no modality {name!r} (it has {sorted(stored)}; written from "
                "other input): delete it to convert again, or pass another --name"
            )
        if (stored[name].kind, stored[name].dtype) != (spec.kind, spec.dtype):
            raise DataError(
                f"{version_dir} holds {name} as {stored[name].kind} {stored[name].dtype}, not "
                f"the requested {spec.kind} {spec.dtype} (written from other input): delete it "
                "to convert again, or pass another --name"
            )
        if tuple(stored[name].shape) != tuple(spec.shape):
            raise DataError(
                f"{version_dir} holds {name} of shape {tuple(stored[name].shape)}, not the "
                f"requested {tuple(spec.shape)} (written by an older converter or with other "
                "options): delete it to convert again, or pass the --frame_size (or other "
                "options) it was written with"
            )
    return version_dir


def main(run_cli: Callable[[Sequence[str] | None], epath.Path], argv: Sequence[str] | None) -> int:
    """Runs a converter CLI; bad input or an OS error becomes one ``error:`` line and exit 1.

    Args:
        run_cli: parses `argv` and converts; returns the version directory.
        argv: command-line arguments without the program name; None = sys.argv[1:].

    Returns:
        The process exit status.
    """
    # TFDS logs a long line per custom config and more; the CLI's own output says what matters.
    absl.logging.set_verbosity(absl.logging.ERROR)
    try:
        run_cli(argv)
    except (DataError, OSError) as e:  # OSError: unwritable out_dir, full disk, ...
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
