"""Any multimodal dataset described by a CSV manifest -> TFRecords.

    python -m data_prep.manifest --manifest=PATH --out_dir=DIR [--name=NAME] [--classes=a,b]
        [--modality_options='NAME:KEY=VALUE[,KEY=VALUE...][;NAME:...]']
        [--sample_rate=16000] [--audio_seconds=3] [--audio_fit=pad|tile]
        [--transform=log_stft|log_psd] [--stft_window=512] [--stft_hop=353]
        [--num_frames=3] [--top_up_frames] [--frame_size=256x341]

The CSV's header is ``id,split,label,<modality>,<modality>[,...]``: two or more modality
columns, named by identifiers (letters, digits and '_', starting with a letter). Each cell is
a path relative to the CSV (or absolute); a column's kind comes from its cells, which must all
agree (a mix is an error naming the column and two rows):

* ``audio``: an audio file (wav, flac, mp3, m4a, ogg, opus, ...; any file PyAV decodes), or a
  video file in a column named ``audio`` or with ``kind=audio`` (its audio track) ->
  ``spectrogram`` float32 ``[F, T]`` (the --sample_rate ... --stft_hop flags);
* ``video``: any other media file (mp4, avi, flv, mkv, ...) -> ``frames`` uint8 RGB
  ``[T, H, W, 3]``: the first frame of each of the first T seconds (--num_frames,
  --frame_size, --top_up_frames, or the column's ``num_frames`` / ``frame_size``);
* ``sequence``: a ``.npy`` float16/32/64 array ``[T, D]`` -> ``sequence`` float32, stored
  zero-padded to T_max with its length T: T_max is the longest T, or ``max_length`` (longer
  arrays are cropped to their first T_max steps, or resampled onto T_max with ``fit=resample``);
* ``frames``: a ``.npy`` uint8/uint16 array ``[T, H, W]`` or ``[T, H, W, C]`` (C 1 or 3) ->
  ``frames`` of that dtype and C (uint8 as JPEG, uint16 exactly): T, H and W as stored (all
  arrays of the column must then agree), or ``num_frames`` (frames at the centres of T equal
  parts) and ``frame_size`` (area-resized).

``--modality_options`` (may be repeated) sets per-modality options: ``;`` separates
modalities, ``,`` options, e.g. ``--modality_options='mfcc:max_length=400,fit=resample;lips:
num_frames=8,frame_size=88x88'``. Options: ``kind=audio|video|sequence|frames`` (any column:
forces the kind; a cell that does not fit is then a bad cell, not a mix), ``max_length=N`` and
``fit=crop|resample`` (sequence), ``num_frames=N`` and ``frame_size=HxW`` (video, frames).

A cell that cannot be decoded (a missing file, corrupt media, a ``.npy`` of the wrong rank,
dtype or width D, empty, with NaN or inf) makes its example unreadable, reported with a
one-line reason (``.npy`` cells name the column); more than --max_unreadable_fraction of them
stops the conversion. Ids are unique per split; split names are free (train/validation/test
are what the trainer reads). The dataset goes to ``<out_dir>/manifest/<name>/<version>``.
The header ``id,split,label,audio,video`` converts exactly as before.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import pathlib
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from data_prep import common, media
from mlb_jax.data.schema import DataError

# Columns every manifest has; every other column is a modality.
FIXED_COLUMNS = ("id", "split", "label")
# The header of the two-modality manifest (still accepted unchanged).
COLUMNS = ("id", "split", "label", "audio", "video")
KINDS = ("audio", "video", "sequence", "frames")
# Cells with these suffixes are audio files; other media files are video files.
AUDIO_EXTENSIONS = frozenset({
    ".aac", ".ac3", ".aif", ".aifc", ".aiff", ".amr", ".ape", ".au", ".caf", ".flac",
    ".m4a", ".mka", ".mp2", ".mp3", ".oga", ".ogg", ".opus", ".ra", ".snd", ".voc", ".w64",
    ".wav", ".wma", ".wv",
})  # fmt: skip
NPY = ".npy"
MODALITY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
OPTIONS_FLAG = "--modality_options"
OPTIONS_SYNTAX = "<modality>:<key>=<value>[,<key>=<value>...][;<modality>:...]"


@dataclasses.dataclass(frozen=True)
class Row:
    """One manifest row; `line` is its line number in the CSV (for messages).

    Attributes:
        line: line number in the CSV.
        id: the example id.
        split: the split name.
        label: the class name.
        files: modality name -> its cell (a path as written in the CSV), in header order.
    """

    line: int
    id: str
    split: str
    label: str
    files: dict[str, str]


@dataclasses.dataclass(kw_only=True, eq=False)
class ManifestConfig(common.ConverterConfig):
    """Manifest config; ``manifest`` is the CSV's file name inside the raw (manual) directory."""

    manifest: str = "manifest.csv"


def read_manifest(path: pathlib.Path, classes: Sequence[str] | None = None) -> list[Row]:
    """Reads and checks a manifest.

    Args:
        path: the CSV.
        classes: the allowed labels; None allows any.

    Returns:
        The rows, in file order.

    Raises:
        DataError: missing file, missing or repeated column, a bad modality name, fewer than
            two modality columns, a row with more fields than the header, an empty field, bad
            split name, id repeated in a split, label not in `classes`, no rows (one line
            naming file, line and fix).
    """
    header_help = f"the header must be {','.join(FIXED_COLUMNS)},<modality>,<modality>[,...]"
    if not path.is_file():
        raise DataError(
            f"manifest {path} does not exist: pass --manifest=<a CSV with columns "
            f"{','.join(FIXED_COLUMNS)},<modality>,<modality>... (e.g. {','.join(COLUMNS)})>"
        )
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = [str(c).strip() for c in reader.fieldnames or ()]
        missing = [c for c in FIXED_COLUMNS if c not in header]
        if missing:
            raise DataError(
                f"manifest {path} has no column {missing[0]!r} (header: {header}): {header_help}"
            )
        repeated = [c for c, n in collections.Counter(header).items() if n > 1]
        if repeated:
            raise DataError(
                f"manifest {path}: column {repeated[0]!r} appears twice in the header: rename "
                "one (every modality has its own column)"
            )
        names = [c for c in header if c not in FIXED_COLUMNS]
        bad = [c for c in names if not MODALITY_NAME.fullmatch(c)]
        if bad:
            raise DataError(
                f"manifest {path}: column {bad[0]!r} is not a modality name: use letters, "
                "digits and '_', starting with a letter"
            )
        if len(names) < 2:
            raise DataError(
                f"manifest {path} has {len(names)} modality column(s) ({', '.join(names) or '-'})"
                f": list at least two ({header_help})"
            )
        reader.fieldnames = header  # stripped
        rows = []
        for r in reader:
            where = f"manifest {path}, line {reader.line_num}"
            if r.get(None):
                raise DataError(
                    f"{where}: {len(header) + len(r[None])} fields, the header has "
                    f"{len(header)}: quote a field that holds a comma"
                )
            cells = {c: str(r[c] or "").strip() for c in header}
            empty = [c for c in header if not cells[c]]
            if empty:
                raise DataError(f"{where}: empty {empty[0]!r}: every row needs {','.join(header)}")
            rows.append(
                Row(
                    reader.line_num,
                    cells["id"],
                    cells["split"],
                    cells["label"],
                    {name: cells[name] for name in names},
                )
            )
    if not rows:
        raise DataError(f"manifest {path} has no rows: add one row per example")
    first_line: dict[tuple[str, str], int] = {}
    for row in rows:
        where = f"manifest {path}, line {row.line}"
        if not re.fullmatch(r"\w+", row.split):
            raise DataError(
                f"{where}: split {row.split!r} is not a name of letters, digits "
                "and '_': fix the row"
            )
        if classes is not None and row.label not in classes:
            raise DataError(
                f"{where}: label {row.label!r} is not one of --classes "
                f"({', '.join(classes)}): add it to --classes or fix the row"
            )
        earlier = first_line.setdefault((row.split, row.id), row.line)
        if earlier != row.line:
            raise DataError(
                f"{where}: id {row.id!r} is already used in split {row.split!r} "
                f"(line {earlier}): ids must be unique per split"
            )
    return rows


# --- Per-modality options ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModalityOptions:
    """The options of one modality column (None: not set; see the module docstring).

    Attributes:
        kind: forces the column's kind: 'audio', 'video', 'sequence' or 'frames'.
        max_length: sequences: the stored T_max (longer arrays are fitted by `fit`).
        fit: sequences: 'crop' (the first max_length steps; default) or 'resample'.
        num_frames: frames and video: the stored frame count.
        frame_size: frames and video: the stored (H, W).
    """

    kind: str | None = None
    max_length: int | None = None
    fit: str | None = None
    num_frames: int | None = None
    frame_size: tuple[int, int] | None = None


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"not one of {', '.join(choices)}")
        return text

    return parse


def _positive(text: str) -> int:
    try:
        return common.positive_int(text)
    except Exception:
        raise ValueError("not an integer >= 1") from None


def _size(text: str) -> tuple[int, int]:
    try:
        return common.frame_size(text)
    except Exception:
        raise ValueError("not a size: use e.g. 88 or 88x120 (HxW)") from None


# key -> (parser, the kinds of column it applies to)
OPTION_KEYS: dict[str, tuple[Callable[[str], Any], tuple[str, ...]]] = {
    "kind": (_choice(*KINDS), KINDS),
    "max_length": (_positive, ("sequence",)),
    "fit": (_choice("crop", "resample"), ("sequence",)),
    "num_frames": (_positive, ("video", "frames")),
    "frame_size": (_size, ("video", "frames")),
}


def parse_modality_options(texts: Sequence[str]) -> dict[str, ModalityOptions]:
    """Parses the values of ``--modality_options`` (the flag may be repeated).

    Args:
        texts: each ``<modality>:<key>=<value>[,<key>=<value>...]``, several joined by ``;``.

    Returns:
        Modality name -> its options, in the order first named.

    Raises:
        DataError: one line naming the option: bad syntax, an unknown key, a bad value, a key
            given twice, ``fit`` without ``max_length``.
    """
    given: dict[str, dict[str, Any]] = {}
    for text in texts:
        for item in text.split(";"):
            item = item.strip()
            if not item:
                continue
            name, colon, rest = (part.strip() for part in item.partition(":"))
            pairs = [pair.strip() for pair in rest.split(",")]
            if not colon or not MODALITY_NAME.fullmatch(name) or not all("=" in p for p in pairs):
                raise DataError(
                    f"{OPTIONS_FLAG}: {item!r} is not {OPTIONS_SYNTAX} (e.g. "
                    "'mfcc:max_length=400,fit=resample;lips:num_frames=8,frame_size=88x88')"
                )
            options = given.setdefault(name, {})
            for pair in pairs:
                key, _, value = (part.strip() for part in pair.partition("="))
                if key not in OPTION_KEYS:
                    raise DataError(
                        f"{OPTIONS_FLAG}: {name}:{pair}: unknown option {key!r} (options: "
                        f"{', '.join(OPTION_KEYS)})"
                    )
                if key in options:
                    raise DataError(f"{OPTIONS_FLAG}: {name}:{key} is given twice: keep one")
                try:
                    options[key] = OPTION_KEYS[key][0](value)
                except ValueError as e:
                    raise DataError(f"{OPTIONS_FLAG}: {name}:{key}={value}: {e}") from None
    for name, options in given.items():
        if "fit" in options and "max_length" not in options:
            raise DataError(
                f"{OPTIONS_FLAG}: {name}:fit={options['fit']} needs {name}:max_length=N (without "
                "it every sequence is stored whole)"
            )
    return {name: ModalityOptions(**options) for name, options in given.items()}


# --- Column kinds and settings ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cell:
    """What the header of one cell's file says (media files are not opened).

    Attributes:
        line: the row's line in the CSV.
        text: the cell as written.
        kind: 'audio' / 'media' (by suffix), 'sequence' / 'frames' (a .npy's dtype), or None
            (a .npy that is missing, unreadable or of another dtype: its example is reported
            when decoded).
        shape: a .npy's shape.
        dtype: a .npy's dtype.
    """

    line: int
    text: str
    kind: str | None
    shape: tuple[int, ...] = ()
    dtype: str = ""

    def describe(self) -> str:
        """E.g. 'a float32 .npy (sequence)', 'a video file'."""
        if self.kind in ("sequence", "frames"):
            return f"a {self.dtype} .npy ({self.kind})"
        return f"an {self.kind} file" if self.kind == "audio" else "a video file"


def probe(line: int, text: str, path: pathlib.Path) -> Cell:
    """The kind (and a .npy's shape and dtype, from its header: np.load with mmap) of a cell."""
    suffix = path.suffix.lower()
    if suffix != NPY:
        return Cell(line, text, "audio" if suffix in AUDIO_EXTENSIONS else "media")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        shape, dtype = tuple(array.shape), str(array.dtype)
        del array  # closes the map
    except Exception:  # missing, unreadable: reported with its reason when decoded
        return Cell(line, text, None)
    if dtype in media.SEQUENCE_DTYPES:
        kind = "sequence"
    elif dtype in media.FRAME_DTYPES:
        kind = "frames"
    else:
        kind = None
    return Cell(line, text, kind, shape, dtype)


def plan_modalities(
    manifest: pathlib.Path,
    rows: Sequence[Row],
    options: Mapping[str, ModalityOptions],
    *,
    audio: media.AudioSettings,
    frames: media.FrameSettings,
) -> dict[str, media.Settings]:
    """Each modality column's kind and settings, from its cells and options.

    Args:
        manifest: the CSV (cells are relative to its directory; named in messages).
        rows: from `read_manifest`.
        options: from `parse_modality_options`.
        audio: the settings of audio columns.
        frames: the default settings of video columns.

    Returns:
        Modality name -> `media.AudioSettings`, `media.FrameSettings`,
        `media.SequenceSettings` or `media.ArrayFrameSettings`, in header order.

    Raises:
        DataError: (one line) an option for a column that does not exist or for another kind,
            a column mixing kinds, no readable cell to tell a column's kind or shape, ``.npy``
            frames of different counts or sizes without ``num_frames`` / ``frame_size``.
    """
    names = list(rows[0].files)
    unknown = [name for name in options if name not in names]
    if unknown:
        raise DataError(
            f"{OPTIONS_FLAG}: {unknown[0]!r} is not a modality column of {manifest} (its "
            f"modality columns: {', '.join(names)})"
        )
    plans = {}
    for name in names:
        opts = options.get(name, ModalityOptions())
        cells = [
            probe(row.line, row.files[name], manifest.parent / row.files[name]) for row in rows
        ]
        where = f"manifest {manifest}: column {name!r}"
        kind = opts.kind or _column_kind(where, name, cells)
        for key, (_, kinds) in OPTION_KEYS.items():
            value = getattr(opts, key)
            if value is not None and kind not in kinds:
                raise DataError(
                    f"{OPTIONS_FLAG}: {name}:{key}: {key} applies to {' and '.join(kinds)} "
                    f"columns, and column {name!r} holds {kind}"
                )
        if kind == "audio":
            plans[name] = audio
        elif kind == "video":
            height, width = opts.frame_size or (frames.height, frames.width)
            plans[name] = media.FrameSettings(
                opts.num_frames or frames.num_frames, height, width, top_up=frames.top_up
            )
        elif kind == "sequence":
            plans[name] = _plan_sequence(where, cells, opts)
        else:
            plans[name] = _plan_frames(where, name, cells, opts)
    return plans


def _column_kind(where: str, name: str, cells: Sequence[Cell]) -> str:
    """The one kind of a column's cells (a video file in a column named 'audio' is audio)."""
    first: dict[str, Cell] = {}
    for cell in cells:
        if cell.kind is not None:
            kind = ("audio" if name == "audio" else "video") if cell.kind == "media" else cell.kind
            first.setdefault(kind, cell)
    if len(first) > 1:
        a, b = list(first.values())[:2]
        raise DataError(
            f"{where} mixes kinds: line {a.line} ({a.text}) is {a.describe()}, line {b.line} "
            f"({b.text}) is {b.describe()}: all cells of a column must be one kind (or force "
            f"one with {OPTIONS_FLAG}='{name}:kind=...')"
        )
    if not first:
        raise DataError(
            f"{where}: no cell tells the column's kind (line {cells[0].line}: {cells[0].text} is "
            "a missing or unreadable .npy, or not float / uint8 / uint16): fix the files"
        )
    return next(iter(first))


def _most_common(values: Sequence[Any]) -> Any:
    """The most frequent value; the first seen among equally frequent ones."""
    return collections.Counter(values).most_common(1)[0][0]


def _plan_sequence(where: str, cells: Sequence[Cell], opts: ModalityOptions) -> media.Settings:
    good = [c for c in cells if c.kind == "sequence" and len(c.shape) == 2 and min(c.shape) > 0]
    if not good:
        raise DataError(
            f"{where}: no readable non-empty float [T, D] .npy to take D from: fix the files"
        )
    width = _most_common([c.shape[1] for c in good])
    longest = max(c.shape[0] for c in good if c.shape[1] == width)
    return media.SequenceSettings(width, opts.max_length or longest, opts.fit or "crop")


def _plan_frames(
    where: str, name: str, cells: Sequence[Cell], opts: ModalityOptions
) -> media.Settings:
    def channels(cell: Cell) -> int:
        return cell.shape[3] if len(cell.shape) == 4 else 1

    good = [
        c
        for c in cells
        if c.kind == "frames"
        and len(c.shape) in (3, 4)
        and min(c.shape[:3]) > 0
        and channels(c) in media.FRAME_CHANNELS
    ]
    if not good:
        raise DataError(
            f"{where}: no readable non-empty uint8/uint16 [T, H, W(, C)] .npy to take the frame "
            "shape from: fix the files"
        )
    dtype = _most_common([c.dtype for c in good])
    c = _most_common([channels(c) for c in good if c.dtype == dtype])
    good = [cell for cell in good if (cell.dtype, channels(cell)) == (dtype, c)]

    def agreed(values: dict[int, Any], what: str, option: str) -> Any:
        """The value all cells share, else an error naming two rows and the option."""
        distinct = {}
        for line, value in values.items():
            distinct.setdefault(value, line)
        if len(distinct) > 1:
            (a, la), (b, lb) = list(distinct.items())[:2]
            raise DataError(
                f"{where}: {what} differ (line {la}: {a}, line {lb}: {b}): store them alike or "
                f"set one with {OPTIONS_FLAG}='{name}:{option}'"
            )
        return next(iter(distinct))

    num_frames = opts.num_frames or agreed(
        {cell.line: cell.shape[0] for cell in good}, "frame counts T", "num_frames=N"
    )
    height, width = opts.frame_size or [
        int(v)
        for v in agreed(
            {cell.line: "x".join(map(str, cell.shape[1:3])) for cell in good},
            "frame sizes HxW",
            "frame_size=HxW",
        ).split("x")
    ]
    return media.ArrayFrameSettings(num_frames, height, width, c, dtype)


class Manifest(common.ConvertingBuilder):
    """A multimodal classification dataset listed in a CSV manifest."""

    name = "manifest"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    The raw directory holds the manifest CSV (id,split,label,<modality>,<modality>...) and the
    media and .npy files it names, by paths relative to it.
    """

    def fix_hints(self) -> dict[str, str]:
        """A clip with too few frames is fixed by topping up (if off) or fewer frames.

        Returns:
            {'TooFewFramesError': the phrase naming --top_up_frames and --num_frames}.
        """
        frames = self.builder_config.frames
        own = sorted(
            name
            for name, settings in self.builder_config.modality_settings.items()
            if isinstance(settings, media.FrameSettings)
            and settings.num_frames != frames.num_frames
        )
        smaller = "a smaller --num_frames" + "".join(
            f" (or {name}:num_frames in {OPTIONS_FLAG})" for name in own
        )
        if frames.top_up:  # even the top-up could not fill them: the clip has fewer frames
            fix = f"pass {smaller}"
            what = f"have fewer than --num_frames={frames.num_frames} frames in all"
        else:
            fix = f"pass --top_up_frames (adds evenly spaced frames) or {smaller}"
            what = f"are shorter than --num_frames={frames.num_frames} seconds"
        if own:
            what = what.replace(f"--num_frames={frames.num_frames}", "their num_frames")
        return {media.TooFewFramesError.__name__: f"{what}: {fix}"}

    def list_examples(self, raw_dir: pathlib.Path) -> list[common.Example]:
        """One example per manifest row; bad files are reported when decoded."""
        config = self.builder_config
        rows = read_manifest(raw_dir / config.manifest, config.class_names)
        return [
            common.Example(
                split=row.split,
                id=row.id,
                label=config.class_names.index(row.label),
                files={name: raw_dir / row.files[name] for name in config.modality_settings},
            )
            for row in rows
        ]


def _run(argv: Sequence[str] | None) -> epath.Path:
    parser = common.parser(__doc__.splitlines()[0], raw_dir=False)
    parser.add_argument(
        "--manifest",
        required=True,
        type=pathlib.Path,
        help="CSV with columns id,split,label,<modality>,<modality>[,...]",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="config name: <out_dir>/manifest/<name> (default: the CSV's stem)",
    )
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated class names in label order (default: the "
        "manifest's labels, sorted); other labels are an error",
    )
    parser.add_argument(
        OPTIONS_FLAG,
        action="append",
        default=[],
        metavar="MODALITY:KEY=VALUE,...;...",
        help="per-modality options (repeatable): kind=audio|video|sequence|frames, "
        "max_length=N, fit=crop|resample (sequences), num_frames=N, frame_size=HxW (frames, "
        "video); e.g. 'mfcc:max_length=400,fit=resample;lips:num_frames=8,frame_size=88x88'",
    )
    parser.add_argument("--sample_rate", type=int, default=16000, help="audio rate, Hz")
    parser.add_argument(
        "--audio_seconds", type=float, default=3.0, help="audio length before the transform, s"
    )
    parser.add_argument(
        "--audio_fit",
        choices=("pad", "tile"),
        default="pad",
        help="how shorter audio is lengthened: zeros or repetition",
    )
    parser.add_argument(
        "--transform",
        choices=("log_stft", "log_psd"),
        default="log_stft",
        help="ln(|STFT| + 1e-7) (CREMA-D/UCF) or ln(PSD + 1e-7) (AVE)",
    )
    parser.add_argument("--stft_window", type=int, default=512, help="window (n_fft), samples")
    parser.add_argument("--stft_hop", type=int, default=353, help="hop, samples")
    parser.add_argument(
        "--num_frames",
        type=int,
        default=3,
        help="frames per video clip: the first frame of each of the first N seconds",
    )
    parser.add_argument(
        "--top_up_frames",
        action="store_true",
        help="a clip shorter than N seconds gets extra evenly spaced frames "
        "(default: it is unreadable)",
    )
    args = parser.parse_args(argv)
    name = args.name or args.manifest.stem
    if not re.fullmatch(r"\w+", name):
        parser.error(f"--name={name!r}: use letters, digits and '_'")
    classes = None if args.classes is None else [c.strip() for c in args.classes.split(",")]
    options = parse_modality_options(args.modality_options)
    rows = read_manifest(args.manifest, classes)
    try:
        audio = media.AudioSettings(
            sample_rate=args.sample_rate,
            num_samples=round(args.audio_seconds * args.sample_rate),
            fit=args.audio_fit,
            transform=args.transform,
            n_fft=args.stft_window,
            hop_length=args.stft_hop,
        )
        frames = media.FrameSettings(args.num_frames, *args.frame_size, top_up=args.top_up_frames)
    except ValueError as e:
        parser.error(str(e))
    config = ManifestConfig(
        name=name,
        description=f"Converted from the manifest {args.manifest.resolve()}.",
        class_names=tuple(classes or sorted({row.label for row in rows})),
        audio=audio,
        frames=frames,
        modality_settings=plan_modalities(args.manifest, rows, options, audio=audio, frames=frames),
        manifest=args.manifest.name,
    )
    return common.convert(
        Manifest,
        config,
        raw_dir=args.manifest.parent,
        out_dir=args.out_dir,
        run=common.run_options(args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    return common.main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
