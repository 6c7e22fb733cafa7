"""CREMA-D -> TFRecords: VAVL speaker-independent folds, 22.05 kHz log-STFT, 3 frames at 1 fps.

    python -m data_prep.cremad --raw_dir=CREMA-D --out_dir=DATA [--fold=0] [--frame_size=256x341]
        [--split_file=data_splits_VALV.pkl]
    python -m data_prep.cremad --raw_dir=CREMA-D --out_dir=DATA --split=ogm_ge

Audio (AudioWAV/<clip>.wav): 22,050 Hz mono, tiled to 3 s (66,150 samples), STFT 512 / hop 353,
ln(|X| + 1e-7) -> float32 [257, 188]. Video (VideoFlash/<clip>.flv): the first frame of the
first 3 seconds -> uint8 [3, H, W, 3]. Label from the file name (MLB order).

Splits: the VAVL folds of kkontras/MLB (`datasets/CREMAD/data_splits_VALV.pkl`), shipped with
this package as `data_prep/cremad_folds.json` (the 5,820 clips every fold covers and each fold's
validation and test speakers), used by default. A split file in the reference layout is used
instead when given with --split_file or found in the raw directory (`SPLIT_FILES`); layouts in
data_prep/README.md, "CREMA-D".

--split=ogm_ge: instead, the split of OGM-GE (GeWu-Lab/OGM-GE_CVPR2022), which most
multimodal-balancing papers report on: its 744-clip test list, shipped as
`data_prep/cremad_ogmge_test.json`, is the test and the validation split (OGM-GE has no
validation split and selects models on its test set); train is every other clip of the
download. It is not speaker-independent (all 91 actors are in train and test); the converter
says so in a warning. Config ``ogm_ge``, never the folds' ``fold<k>``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from etils import epath

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

# The named splits: the VAVL folds (default, speaker-independent, what MLB uses) and OGM-GE's.
VAVL, OGM_GE = "vavl", "ogm_ge"
SPLITS = (VAVL, OGM_GE)
# OGM-GE's CREMA-D test list (data/CREMAD/test.csv of GeWu-Lab/OGM-GE_CVPR2022), shipped:
# {"test": {speaker: ["<sentence>_<EMO>_<level>", ...]}, plus the source and checksums}.
OGM_GE_FILE = pathlib.Path(__file__).with_name("cremad_ogmge_test.json")
OGM_GE_WARNING = (
    "warning: the OGM-GE split is not speaker-independent: the same 91 actors appear in train "
    "and test (speaker leakage), and validation is the test set (model selection on test, as "
    "in OGM-GE); compare its results only with papers that use this split (--split=vavl, the "
    "default, gives MLB's speaker-independent folds)"
)

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
        split: `VAVL` (the folds) or `OGM_GE` (OGM-GE's lists; `fold` and `split_file` unused).
        fold: 0-based VAVL fold (key ``fold + 1`` of the folds).
        split_file: a split file in the reference layout; None: the one in the raw directory
            (`SPLIT_FILES`) if there is one, else the folds shipped with the package.
    """

    split: str = VAVL
    fold: int = 0
    split_file: pathlib.Path | None = None


def make_config(
    fold: int = 0,
    frame_size: tuple[int, int] = common.DEFAULT_FRAME_SIZE,
    split_file: pathlib.Path | None = None,
    split: str = VAVL,
) -> CremaDConfig:
    """The config of fold `fold` (0-4; MLB uses 0, 1, 2) with frames of `frame_size` (H, W).

    `split_file`: see `CremaDConfig`. `split=OGM_GE`: OGM-GE's split instead (config
    ``ogm_ge``, so never the directory of a fold); `fold` must then be 0 and `split_file` None.

    Raises:
        DataError: an unknown `split`, or `fold` / `split_file` given with `OGM_GE`.
    """
    frames = media.FrameSettings(NUM_FRAMES, *frame_size, top_up=True)
    if split == OGM_GE:
        if fold != 0 or split_file is not None:
            raise DataError(
                "--fold and --split_file choose a VAVL fold; --split=ogm_ge has none: leave "
                "them out, or drop --split=ogm_ge"
            )
        return CremaDConfig(
            name=common.sized_name(OGM_GE, frame_size),
            description=(
                "CREMA-D, OGM-GE split: its 744-clip test list is test and validation, the "
                "other clips train; the same actors in train and test (not speaker-independent)."
            ),
            class_names=CLASS_NAMES,
            audio=AUDIO,
            frames=frames,
            split=OGM_GE,
        )
    if split != VAVL:
        raise DataError(f"unknown CREMA-D split {split!r}: use one of {SPLITS}")
    return CremaDConfig(
        name=common.sized_name(f"fold{fold}", frame_size),
        description=f"CREMA-D, VAVL fold key {fold + 1}, speaker-independent train/val/test.",
        class_names=CLASS_NAMES,
        audio=AUDIO,
        frames=frames,
        fold=fold,
        split_file=split_file,
    )


_FOLDS_FIX = "restore the file from the repository, or pass --split_file"
_OGM_GE_FIX = "restore the file from the repository, or use --split=vavl"


@functools.cache
def _read_shipped(path: pathlib.Path, fix: str) -> dict[str, Any]:
    """A parsed JSON file shipped with the package (read once per path); `fix`: the error's."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(
            f"the CREMA-D split data shipped with the package ({path}) cannot be read ({e}): {fix}"
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
    data = _read_shipped(FOLDS_FILE, _FOLDS_FIX)
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


def shipped_ogm_ge_test() -> list[str]:
    """The 744 clips of OGM-GE's CREMA-D test list, from the copy shipped with the package.

    Checked against the file's checksums (count, no duplicates, SHA-256 of the sorted names).

    Returns:
        Clip names (``<actor>_<sentence>_<EMO>_<level>``), sorted.

    Raises:
        DataError: the shipped file is unreadable or fails its checksums.
    """
    data = _read_shipped(OGM_GE_FILE, _OGM_GE_FIX)
    try:
        names = sorted(f"{spk}_{code}" for spk, codes in data["test"].items() for code in codes)
        expected = (data["checksums"]["clips"], data["checksums"]["sha256_sorted_names"])
    except (KeyError, TypeError, AttributeError) as e:
        raise DataError(
            f"the OGM-GE test list shipped with the package ({OGM_GE_FILE}) lacks its "
            f"'test' or 'checksums' entries ({type(e).__name__}: {e}): {_OGM_GE_FIX}"
        ) from e
    digest = hashlib.sha256(("\n".join(names) + "\n").encode()).hexdigest()
    if len(set(names)) != len(names) or (len(names), digest) != expected:
        raise DataError(
            f"the OGM-GE test list shipped with the package ({OGM_GE_FILE}) fails its "
            f"checksums ({len(names)} names, {len(set(names))} distinct, expected "
            f"{expected[0]} and their SHA-256): {_OGM_GE_FIX}"
        )
    return names


def ogm_ge_split(download: Iterable[str]) -> dict[str, list[str]]:
    """Clip names per split of OGM-GE's split of the clips in `download`.

    Args:
        download: the clip names of the raw download.

    Returns:
        'test' and 'validation': the whole shipped test list (a clip of it missing from the
        download is then reported unreadable); 'train': every clip of `download` not in it.
        Sorted.
    """
    test = shipped_ogm_ge_test()
    train = sorted(set(download) - set(test))
    return {common.TRAIN: train, common.VALIDATION: list(test), common.TEST: list(test)}


def download_clips(raw_dir: pathlib.Path) -> list[str]:
    """The clip names of a CREMA-D download: every ``AudioWAV/*.wav`` and ``VideoFlash/*.flv``.

    A clip with only one of the two files is listed (and then reported unreadable).

    Raises:
        DataError: a file whose name is not a clip name.
    """
    names = set()
    for sub, suffix in (("AudioWAV", ".wav"), ("VideoFlash", ".flv")):
        for path in (raw_dir / sub).glob(f"*{suffix}"):
            parts = path.stem.split("_")
            if len(parts) != 4 or parts[2] not in EMOTIONS:
                raise DataError(
                    f"{path} is not <actor>_<sentence>_<EMO>_<level>{suffix} with EMO in "
                    f"{EMOTIONS}: remove it from the CREMA-D download"
                )
            names.add(path.stem)
    return sorted(names)


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
    package; a data_splits_VALV.pkl there (or --split_file) is used instead. OGM-GE's test
    list ships with the package too (--split=ogm_ge).
    """

    def list_examples(self, raw_dir: pathlib.Path) -> list[common.Example]:
        """Lists the split's clips; a clip whose .wav or .flv is missing is reported unreadable.

        VAVL: the fold comes from the config's split file, else from a `SPLIT_FILES` file in
        `raw_dir`, else from the folds shipped with the package. OGM-GE: `ogm_ge_split` of
        the download's clips, with `OGM_GE_WARNING` printed (stderr).
        """
        for sub in ("AudioWAV", "VideoFlash"):
            if not (raw_dir / sub).is_dir():
                raise DataError(
                    f"{raw_dir} has no {sub}/: pass --raw_dir=<the CREMA-D checkout "
                    "holding AudioWAV/ and VideoFlash/>"
                )
        config = self.builder_config
        if config.split == OGM_GE:
            clips = ogm_ge_split(download_clips(raw_dir))
            print(
                f"{self.name}: OGM-GE split, test list from the package ({OGM_GE_FILE.name}), "
                f"also used as validation; train: the other {len(clips[common.TRAIN])} clips "
                f"of {raw_dir}"
            )
            print(OGM_GE_WARNING, file=sys.stderr)
        else:
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


def _run(argv: Sequence[str] | None) -> epath.Path:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--split",
        default=VAVL,
        choices=SPLITS,
        help="vavl (default): the speaker-independent VAVL folds MLB uses; ogm_ge: OGM-GE's "
        "split (its test list is test and validation, the other clips train; the same actors "
        "in train and test)",
    )
    parser.add_argument(
        "--fold",
        type=int,
        default=None,
        choices=range(5),
        help="0-based VAVL fold, reads key fold+1 (default 0; MLB uses 0, 1, 2)",
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
    if args.split == OGM_GE and (args.fold is not None or args.split_file is not None):
        raise DataError(
            "--fold and --split_file choose a VAVL fold; --split=ogm_ge has none: leave them "
            "out, or drop --split=ogm_ge"
        )
    return common.convert(
        CremaD,
        make_config(args.fold or 0, args.frame_size, args.split_file, args.split),
        raw_dir=args.raw_dir,
        out_dir=args.out_dir,
        run=common.run_options(args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    return common.main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
