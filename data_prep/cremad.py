"""CREMA-D -> TFRecords: VAVL speaker-independent folds, 22.05 kHz log-STFT, 3 frames at 1 fps.

    python -m data_prep.cremad --raw_dir=CREMA-D --out_dir=DATA [--fold=0] [--frame_size=256x341]
        [--split_file=data_splits_VALV.pkl]

Audio (AudioWAV/<clip>.wav): 22,050 Hz mono, tiled to 3 s (66,150 samples), STFT 512 / hop 353,
ln(|X| + 1e-7) -> float32 [257, 188]. Video (VideoFlash/<clip>.flv): the first frame of the
first 3 seconds -> uint8 [3, H, W, 3]. Label from the file name (MLB order).

Splits: the VAVL folds of kkontras/MLB (`datasets/CREMAD/data_splits_VALV.pkl`), shipped with
this package as `data_prep/cremad_folds.json` (the 5,820 clips every fold covers and each fold's
validation and test speakers), used by default. A split file in the reference layout is used
instead when given with --split_file or found in the raw directory (`SPLIT_FILES`); layouts in
data_prep/README.md, "CREMA-D".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from data_prep import common, media
from mlb_jax.data.schema import DataError

# Emotion codes of the file names, in MLB's label order (CREMAD_Dataset.py), and their names.
EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
CLASS_NAMES = ("neutral", "happy", "sad", "fear", "disgust", "anger")

# The VAVL fold file of kkontras/MLB (JSON despite .pkl); the .json twin has no "-k" suffixes.
# Looked for in the raw directory when --split_file is not given.
SPLIT_FILES = ("data_splits_VALV.pkl", "data_splits_VALV.json")
_SPLIT_KEYS = {"train": common.TRAIN, "val": common.VALIDATION, "test": common.TEST}
# The same folds, shipped with the package: {"folds": {key: {"val": [speaker, ...], "test":
# [...]}}, "clips": {speaker: ["<sentence>_<EMO>_<level>", ...]}, plus the source and checksums}.
FOLDS_FILE = pathlib.Path(__file__).with_name("cremad_folds.json")

AUDIO = media.AudioSettings(
    sample_rate=22050,
    num_samples=3 * 22050,
    fit="tile",
    transform="log_stft",
    n_fft=512,
    hop_length=353,
)
NUM_FRAMES = 3


@dataclasses.dataclass(kw_only=True, eq=False)
class CremaDConfig(common.ConverterConfig):
    """CREMA-D config.

    Attributes:
        fold: 0-based VAVL fold (key ``fold + 1`` of the folds).
        split_file: a split file in the reference layout; None: the one in the raw directory
            (`SPLIT_FILES`) if there is one, else the folds shipped with the package.
    """

    fold: int = 0
    split_file: pathlib.Path | None = None


def make_config(
    fold: int = 0,
    frame_size: tuple[int, int] = common.DEFAULT_FRAME_SIZE,
    split_file: pathlib.Path | None = None,
) -> CremaDConfig:
    """The config of fold `fold` (0-4; MLB uses 0, 1, 2) with frames of `frame_size` (H, W).

    `split_file`: see `CremaDConfig`.
    """
    return CremaDConfig(
        name=common.sized_name(f"fold{fold}", frame_size),
        description=f"CREMA-D, VAVL fold key {fold + 1}, speaker-independent train/val/test.",
        class_names=CLASS_NAMES,
        audio=AUDIO,
        frames=media.FrameSettings(NUM_FRAMES, *frame_size, top_up=True),
        fold=fold,
        split_file=split_file,
    )


@functools.cache
def _read_folds_file(path: pathlib.Path) -> dict[str, Any]:
    """The parsed shipped folds file (read once per path)."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(
            f"the CREMA-D folds shipped with the package ({path}) cannot be read ({e}): "
            "restore the file from the repository, or pass --split_file"
        ) from e


def shipped_fold(fold: int) -> dict[str, list[str]]:
    """Clip names per split of one VAVL fold, from the folds shipped with the package.

    Every fold covers the same 5,820 clips; a fold's validation and test sets are the clips of
    its 14 validation and 14 test speakers, its train set those of the 63 others. The split
    sizes are checked against the file's checksums.

    Args:
        fold: 0-based fold (key ``fold + 1``).

    Returns:
        'train' / 'validation' / 'test' -> clip names (``<actor>_<sentence>_<EMO>_<level>``),
        sorted; as sets, equal to what `read_fold` gives for the reference file.

    Raises:
        DataError: unknown fold, or the shipped file is unreadable or fails its checksums.
    """
    data = _read_folds_file(FOLDS_FILE)
    key = str(fold + 1)
    if key not in data["folds"]:
        raise DataError(
            f"the shipped CREMA-D folds have no fold key {key!r} (keys {sorted(data['folds'])})"
            ": --fold is 0-based"
        )
    speakers = {
        common.VALIDATION: set(data["folds"][key]["val"]),
        common.TEST: set(data["folds"][key]["test"]),
    }
    clips: dict[str, list[str]] = {split: [] for split in _SPLIT_KEYS.values()}
    for speaker, codes in sorted(data["clips"].items()):
        split = next((s for s, names in speakers.items() if speaker in names), common.TRAIN)
        clips[split].extend(f"{speaker}_{code}" for code in sorted(codes))
    sizes = {raw_key: len(clips[split]) for raw_key, split in _SPLIT_KEYS.items()}
    expected = data["checksums"]["split_sizes"][key]
    if sizes != expected:
        raise DataError(
            f"the CREMA-D folds shipped with the package ({FOLDS_FILE}) fail their checksums: "
            f"fold {key!r} has split sizes {sizes}, expected {expected}: restore the file "
            "from the repository, or pass --split_file"
        )
    return clips


def load_fold(fold: int, split_file: pathlib.Path | None = None) -> dict[str, list[str]]:
    """Clip names per split of one VAVL fold: from `split_file`, or the shipped folds if None.

    Args:
        fold: 0-based fold.
        split_file: a split file in the reference layout (`read_fold`), or None.

    Returns:
        'train' / 'validation' / 'test' -> clip names.

    Raises:
        DataError: `split_file` is missing or wrong (`read_fold`), or the shipped folds are
            (`shipped_fold`).
    """
    if split_file is None:
        return shipped_fold(fold)
    if not split_file.is_file():
        raise DataError(
            f"CREMA-D split file {split_file} does not exist: pass --split_file=<"
            "datasets/CREMAD/data_splits_VALV.pkl of kkontras/MLB>, or leave it out to use "
            "the folds shipped with the package"
        )
    return read_fold(split_file, fold)


def read_fold(split_file: pathlib.Path, fold: int) -> dict[str, list[str]]:
    """Clip names per split of one fold of the VAVL split file.

    Args:
        split_file: ``data_splits_VALV.pkl`` (JSON text) or ``.json``; entries are
            ``"<clip>.wav-<k>"`` or ``"<clip>.wav"``. The ``-<k>`` consensus label is ignored,
            as in MLB: the label comes from the file name.
        fold: 0-based fold.

    Returns:
        'train' / 'validation' / 'test' -> clip names (``<actor>_<sentence>_<EMO>_<level>``).

    Raises:
        DataError: unreadable file, missing fold or split, an unknown emotion code, or an
            actor in two splits.
    """
    try:
        folds = json.loads(split_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(
            f"CREMA-D split file {split_file} is not JSON text ({e}): use "
            "datasets/CREMAD/data_splits_VALV.pkl of kkontras/MLB"
        ) from e
    key = str(fold + 1)
    if key not in folds:
        raise DataError(
            f"CREMA-D split file {split_file} has no fold key {key!r} (keys "
            f"{sorted(folds)}): --fold is 0-based"
        )
    clips: dict[str, list[str]] = {}
    for raw_key, split in _SPLIT_KEYS.items():
        if raw_key not in folds[key]:
            raise DataError(
                f"CREMA-D split file {split_file}: fold {key!r} has no {raw_key!r} "
                "list: use data_splits_VALV.pkl of kkontras/MLB"
            )
        clips[split] = [entry.rsplit(".wav", 1)[0] for entry in folds[key][raw_key]]
    for split, names in clips.items():
        for name in names:
            parts = name.split("_")
            if len(parts) != 4 or parts[2] not in EMOTIONS:
                raise DataError(
                    f"CREMA-D split file {split_file}, fold {key!r}, {split}: {name!r} is not "
                    f"<actor>_<sentence>_<EMO>_<level> with EMO in {EMOTIONS}: fix the entry"
                )
    actors = {split: {n.split("_")[0] for n in names} for split, names in clips.items()}
    for a, b in (
        (common.TRAIN, common.VALIDATION),
        (common.TRAIN, common.TEST),
        (common.VALIDATION, common.TEST),
    ):
        shared = actors[a] & actors[b]
        if shared:
            raise DataError(
                f"CREMA-D split file {split_file}, fold {key!r}: actor {min(shared)} is in "
                f"both {a} and {b}; the folds must be speaker-independent: use the VAVL file"
            )
    return clips


class CremaD(common.ConvertingBuilder):
    """CREMA-D (Cao et al. 2014): acted emotional speech, 6 emotions, 91 actors."""

    name = "cremad"
    HOMEPAGE = "https://github.com/CheyneyComputerScience/CREMA-D"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Clone github.com/CheyneyComputerScience/CREMA-D (git lfs), so that the raw directory
    holds AudioWAV/<clip>.wav and VideoFlash/<clip>.flv. The VAVL folds ship with the
    package; a data_splits_VALV.pkl there (or --split_file) is used instead.
    """

    def list_examples(self, raw_dir: pathlib.Path) -> list[common.Example]:
        """Lists the fold's clips; a clip whose .wav or .flv is missing is reported unreadable.

        The fold comes from the config's split file, else from a `SPLIT_FILES` file in
        `raw_dir`, else from the folds shipped with the package.
        """
        for sub in ("AudioWAV", "VideoFlash"):
            if not (raw_dir / sub).is_dir():
                raise DataError(
                    f"{raw_dir} has no {sub}/: pass --raw_dir=<the CREMA-D checkout "
                    "holding AudioWAV/ and VideoFlash/>"
                )
        config = self.builder_config
        split_file = config.split_file or next(
            (raw_dir / f for f in SPLIT_FILES if (raw_dir / f).is_file()), None
        )
        clips = load_fold(config.fold, split_file)
        source = split_file or f"the folds shipped with the package ({FOLDS_FILE.name})"
        print(f"{self.name}: VAVL fold key {config.fold + 1} from {source}")
        return [
            common.Example(
                split=split,
                id=clip,
                label=EMOTIONS.index(clip.split("_")[2]),
                audio=raw_dir / "AudioWAV" / f"{clip}.wav",
                video=raw_dir / "VideoFlash" / f"{clip}.flv",
            )
            for split, names in clips.items()
            for clip in names
        ]


def _run(argv: Sequence[str] | None) -> pathlib.Path:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--fold",
        type=int,
        default=0,
        choices=range(5),
        help="0-based VAVL fold, reads key fold+1 (MLB uses 0, 1, 2)",
    )
    parser.add_argument(
        "--split_file",
        type=pathlib.Path,
        default=None,
        help="a VAVL split file (data_splits_VALV.pkl of kkontras/MLB, or its .json twin) to "
        "use instead of the folds shipped with the package (default: the one in --raw_dir if "
        "there is one, else the shipped folds)",
    )
    args = parser.parse_args(argv)
    return common.convert(
        CremaD,
        make_config(args.fold, args.frame_size, args.split_file),
        raw_dir=args.raw_dir,
        out_dir=args.out_dir,
        run=common.run_options(args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    return common.main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
