"""CREMA-D -> TFRecords: VAVL speaker-independent folds, 22.05 kHz log-STFT, 3 frames at 1 fps.

    python -m data_prep.cremad --raw_dir=CREMA-D --out_dir=DATA [--fold=0] [--frame_size=256x341]

Audio (AudioWAV/<clip>.wav): 22,050 Hz mono, tiled to 3 s (66,150 samples), STFT 512 / hop 353,
ln(|X| + 1e-7) -> float32 [257, 188]. Video (VideoFlash/<clip>.flv): the first frame of the
first 3 seconds -> uint8 [3, H, W, 3]. Label from the file name (MLB order). Splits from the
VAVL fold file of kkontras/MLB, `datasets/CREMAD/data_splits_VALV.pkl` (JSON text; layout in
data_prep/README.md, "CREMA-D").
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from collections.abc import Sequence

from data_prep import common, media
from mlb_jax.data.schema import DataError

# Emotion codes of the file names, in MLB's label order (CREMAD_Dataset.py), and their names.
EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
CLASS_NAMES = ("neutral", "happy", "sad", "fear", "disgust", "anger")

# The VAVL fold file of kkontras/MLB (JSON despite .pkl); the .json twin has no "-k" suffixes.
SPLIT_FILES = ("data_splits_VALV.pkl", "data_splits_VALV.json")
_SPLIT_KEYS = {"train": common.TRAIN, "val": common.VALIDATION, "test": common.TEST}

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
    """CREMA-D config; ``fold`` is 0-based (reads key ``fold + 1`` of the split file)."""

    fold: int = 0


def make_config(fold: int = 0, frame_size: tuple[int, int] = common.DEFAULT_FRAME_SIZE):
    """The config of fold `fold` (0-4; MLB uses 0, 1, 2) with frames of `frame_size` (H, W)."""
    return CremaDConfig(
        name=common.sized_name(f"fold{fold}", frame_size),
        description=f"CREMA-D, VAVL fold key {fold + 1}, speaker-independent train/val/test.",
        class_names=CLASS_NAMES,
        audio=AUDIO,
        frames=media.FrameSettings(NUM_FRAMES, *frame_size, top_up=True),
        fold=fold,
    )


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
    Clone github.com/CheyneyComputerScience/CREMA-D (git lfs) and copy
    datasets/CREMAD/data_splits_VALV.pkl of github.com/kkontras/MLB into it, so that the raw
    directory holds AudioWAV/<clip>.wav, VideoFlash/<clip>.flv and data_splits_VALV.pkl.
    """

    def list_examples(self, raw_dir: pathlib.Path) -> list[common.Example]:
        """Lists the fold's clips; a clip whose .wav or .flv is missing is reported unreadable."""
        for sub in ("AudioWAV", "VideoFlash"):
            if not (raw_dir / sub).is_dir():
                raise DataError(
                    f"{raw_dir} has no {sub}/: pass --raw_dir=<the CREMA-D checkout "
                    "holding AudioWAV/ and VideoFlash/>"
                )
        split_file = next((raw_dir / f for f in SPLIT_FILES if (raw_dir / f).is_file()), None)
        if split_file is None:
            raise DataError(
                f"CREMA-D split file missing: expected {raw_dir / SPLIT_FILES[0]} (or .json); "
                "copy datasets/CREMAD/data_splits_VALV.pkl of github.com/kkontras/MLB there"
            )
        clips = read_fold(split_file, self.builder_config.fold)
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
    args = parser.parse_args(argv)
    return common.convert(
        CremaD,
        make_config(args.fold, args.frame_size),
        raw_dir=args.raw_dir,
        out_dir=args.out_dir,
        run=common.run_options(args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    return common.main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
