"""Any audio-video dataset described by a CSV manifest -> TFRecords.

    python -m data_prep.manifest --manifest=PATH --out_dir=DIR [--name=NAME] [--classes=a,b]
        [--sample_rate=16000] [--audio_seconds=3] [--audio_fit=pad|tile]
        [--transform=log_stft|log_psd] [--stft_window=512] [--stft_hop=353]
        [--num_frames=3] [--top_up_frames] [--frame_size=256x341]

The CSV has the header ``id,split,label,audio,video``; ``audio`` and ``video`` are paths relative
to the CSV (or absolute) of any file PyAV decodes, and ``audio`` may be the video file itself to
use its audio track. Ids are unique per split; split names are free (train/validation/test are
what the trainer reads). The dataset goes to ``<out_dir>/manifest/<name>/<version>``.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib
import re
import sys
from collections.abc import Sequence

from data_prep import common, media
from mlb_jax.data.schema import DataError

COLUMNS = ("id", "split", "label", "audio", "video")


@dataclasses.dataclass(frozen=True)
class Row:
    """One manifest row; `line` is its line number in the CSV (for messages)."""

    line: int
    id: str
    split: str
    label: str
    audio: str
    video: str


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
        DataError: missing file, missing column, empty field, bad split name, id repeated in a
            split, label not in `classes`, no rows (one line naming file, line and fix).
    """
    if not path.is_file():
        raise DataError(
            f"manifest {path} does not exist: pass --manifest=<a CSV with columns "
            f"{','.join(COLUMNS)}>"
        )
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise DataError(
                f"manifest {path} has no column {missing[0]!r} (header: "
                f"{reader.fieldnames}): the header must be {','.join(COLUMNS)}"
            )
        rows = [Row(reader.line_num, *(str(r[c] or "").strip() for c in COLUMNS)) for r in reader]
    if not rows:
        raise DataError(f"manifest {path} has no rows: add one row per example")
    first_line: dict[tuple[str, str], int] = {}
    for row in rows:
        where = f"manifest {path}, line {row.line}"
        empty = [c for c in COLUMNS if not getattr(row, c)]
        if empty:
            raise DataError(f"{where}: empty {empty[0]!r}: every row needs {','.join(COLUMNS)}")
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


class Manifest(common.ConvertingBuilder):
    """An audio-video classification dataset listed in a CSV manifest."""

    name = "manifest"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    The raw directory holds the manifest CSV (id,split,label,audio,video) and the media files
    it names, by paths relative to it.
    """

    def fix_hints(self) -> dict[str, str]:
        """A clip with too few frames is fixed by topping up (if off) or fewer frames.

        Returns:
            {'TooFewFramesError': the phrase naming --top_up_frames and --num_frames}.
        """
        frames = self.builder_config.frames
        if frames.top_up:  # even the top-up could not fill them: the clip has fewer frames
            fix = "pass a smaller --num_frames"
            what = f"have fewer than --num_frames={frames.num_frames} frames in all"
        else:
            fix = "pass --top_up_frames (adds evenly spaced frames) or a smaller --num_frames"
            what = f"are shorter than --num_frames={frames.num_frames} seconds"
        return {media.TooFewFramesError.__name__: f"{what}: {fix}"}

    def list_examples(self, raw_dir: pathlib.Path) -> list[common.Example]:
        """One example per manifest row; missing media files are reported unreadable."""
        config = self.builder_config
        rows = read_manifest(raw_dir / config.manifest, config.class_names)
        return [
            common.Example(
                split=row.split,
                id=row.id,
                label=config.class_names.index(row.label),
                audio=raw_dir / row.audio,
                video=raw_dir / row.video,
            )
            for row in rows
        ]


def _run(argv: Sequence[str] | None) -> pathlib.Path:
    parser = common.parser(__doc__.splitlines()[0], raw_dir=False)
    parser.add_argument(
        "--manifest",
        required=True,
        type=pathlib.Path,
        help="CSV with columns id,split,label,audio,video",
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
        help="frames per clip: the first frame of each of the first N seconds",
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
    rows = read_manifest(args.manifest, classes)
    try:
        config = ManifestConfig(
            name=name,
            description=f"Converted from the manifest {args.manifest.resolve()}.",
            class_names=tuple(classes or sorted({row.label for row in rows})),
            audio=media.AudioSettings(
                sample_rate=args.sample_rate,
                num_samples=round(args.audio_seconds * args.sample_rate),
                fit=args.audio_fit,
                transform=args.transform,
                n_fft=args.stft_window,
                hop_length=args.stft_hop,
            ),
            frames=media.FrameSettings(
                args.num_frames, *args.frame_size, top_up=args.top_up_frames
            ),
            manifest=args.manifest.name,
        )
    except ValueError as e:
        parser.error(str(e))
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
