"""UCF101-51 -> TFRecords: the 51 classes with audio, official split 1/2/3, 16 kHz log-STFT.

    python -m data_prep.ucf51 --raw_dir=UCF101 --out_dir=DATA [--split=1] [--frame_size=240x320]

Test = ``testlist0<k>.txt``; validation = a seeded 10 % of the training (class, group) pairs, so
no group straddles train and validation; train = the rest of ``trainlist0<k>.txt``. Audio: 16 kHz
mono, the first 3 s (48,000 samples, zero-padded if shorter), STFT 512 / hop 353,
ln(|X| + 1e-7) -> float32 [257, 136]. Video: the first frame of seconds 0-3 -> uint8 [4, H, W, 3].
As in MLB, clips without audio or with fewer than 4 whole seconds are skipped (and reported).
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import sys
from collections.abc import Sequence

import numpy as np
from etils import epath

from data_prep import common, media
from mlb_jax.data.schema import DataError

# The UCF101 classes that are not in UCF50, in ascending official index: the 51 classes with
# audio (data_prep/README.md, "UCF101-51"). Label i is CLASS_NAMES[i].
CLASS_NAMES = (
    "ApplyEyeMakeup",
    "ApplyLipstick",
    "Archery",
    "BabyCrawling",
    "BalanceBeam",
    "BandMarching",
    "BasketballDunk",
    "BlowDryHair",
    "BlowingCandles",
    "BodyWeightSquats",
    "Bowling",
    "BoxingPunchingBag",
    "BoxingSpeedBag",
    "BrushingTeeth",
    "CliffDiving",
    "CricketBowling",
    "CricketShot",
    "CuttingInKitchen",
    "FieldHockeyPenalty",
    "FloorGymnastics",
    "FrisbeeCatch",
    "FrontCrawl",
    "Haircut",
    "Hammering",
    "HammerThrow",
    "HandstandPushups",
    "HandstandWalking",
    "HeadMassage",
    "IceDancing",
    "Knitting",
    "LongJump",
    "MoppingFloor",
    "ParallelBars",
    "PlayingCello",
    "PlayingDaf",
    "PlayingDhol",
    "PlayingFlute",
    "PlayingSitar",
    "Rafting",
    "ShavingBeard",
    "Shotput",
    "SkyDiving",
    "SoccerPenalty",
    "StillRings",
    "SumoWrestling",
    "Surfing",
    "TableTennisShot",
    "Typing",
    "UnevenBars",
    "WallPushups",
    "WritingOnBoard",
)
# MLB's seed of split k (seeds [0, 109, 19, 337][fold]); it draws the validation groups.
SEEDS = {1: 109, 2: 19, 3: 337}
VAL_FRACTION = 0.1

AUDIO = media.AudioSettings(
    sample_rate=16000,
    num_samples=3 * 16000,
    fit="pad",
    transform="log_stft",
    n_fft=512,
    hop_length=353,
)
NUM_FRAMES = 4
# UCF101 clips are 320x240: stored at their own size (no upsampling), so RandomResizedCrop
# crops exactly what the reference crops (its pickle holds the 240x320 frames).
DEFAULT_FRAME_SIZE = (240, 320)


@dataclasses.dataclass(kw_only=True, eq=False)
class UCF51Config(common.ConverterConfig):
    """UCF101-51 config.

    Attributes:
        split: official split, 1, 2 or 3.
        val_fraction: fraction of each class's training groups held out for validation.
        seed: seed of that draw.
    """

    split: int = 1
    val_fraction: float = VAL_FRACTION
    seed: int = SEEDS[1]


def make_config(
    split: int = 1,
    frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE,
    *,
    val_fraction: float = VAL_FRACTION,
    seed: int | None = None,
) -> UCF51Config:
    """The config of official split `split`; `seed` defaults to MLB's seed of that split."""
    seed = SEEDS[split] if seed is None else seed
    name = f"split{split}"
    if (val_fraction, seed) != (VAL_FRACTION, SEEDS[split]):
        name += f"_val{val_fraction:g}_seed{seed}"
    return UCF51Config(
        name=common.sized_name(name, frame_size, DEFAULT_FRAME_SIZE),
        description=f"UCF101, the 51 classes with audio, official split {split}; validation = "
        f"{val_fraction:g} of the training groups (seed {seed}).",
        class_names=CLASS_NAMES,
        audio=AUDIO,
        frames=media.FrameSettings(NUM_FRAMES, *frame_size, top_up=False),
        split=split,
        val_fraction=val_fraction,
        seed=seed,
    )


def read_list(path: pathlib.Path, column: int = 0) -> list[str]:
    """One column of the non-blank lines of an official list file (CRLF tolerated).

    Column 0 of train/test lists is the clip path ``<Class>/v_<Class>_gGG_cCC.avi``; column -1
    of classInd.txt is the class name.

    Raises:
        DataError: the file is missing.
    """
    if not path.is_file():
        raise DataError(
            f"UCF101 list file missing: {path}; unpack UCF101TrainTestSplits-"
            "RecognitionTask.zip into <raw_dir>/ucfTrainTestlist/"
        )
    return [line.split()[column] for line in path.read_text().splitlines() if line.strip()]


def group_of(clip: str) -> tuple[str, str]:
    """(class folder, group) of a clip path such as ``Rafting/v_Rafting_g09_c03.avi``.

    The class comes from the folder, not the file name: the files of HandstandPushups are
    named ``v_HandStandPushups_...``.
    """
    folder, file_name = clip.split("/")
    return folder, file_name.split("_")[2]


def validation_groups(train: Sequence[str], fraction: float, seed: int) -> set[tuple[str, str]]:
    """Draws round(fraction * groups) (at least 1 if fraction > 0) groups of each class.

    Args:
        train: training clip paths.
        fraction: share of each class's groups to hold out.
        seed: numpy seed.

    Returns:
        The held-out (class, group) pairs.
    """
    rng = np.random.default_rng(seed)
    groups = collections.defaultdict(set)
    for clip in train:
        folder, group = group_of(clip)
        groups[folder].add(group)
    held_out = set()
    for folder in sorted(groups):
        options = sorted(groups[folder])
        count = max(1, round(fraction * len(options))) if fraction > 0 else 0
        held_out |= {(folder, g) for g in rng.choice(options, count, replace=False)}
    return held_out


class UCF51(common.ConvertingBuilder):
    """UCF101 (Soomro et al. 2012) restricted to the 51 action classes that have audio."""

    name = "ucf51"
    HOMEPAGE = "https://www.crcv.ucf.edu/data/UCF101.php"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip from the UCF CRCV site and
    unpack both into one directory, so that it holds UCF-101/<Class>/v_*.avi and
    ucfTrainTestlist/{classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt}.
    """
    # MLB drops clips without audio and clips with fewer than 4 frames at 1 fps.
    SKIP_ERRORS = (media.NoAudioError, media.TooFewFramesError)

    def list_examples(self, raw_dir: pathlib.Path) -> list[common.Example]:
        """Lists the 51-class clips of the split's lists; validation drawn from train groups."""
        config = self.builder_config
        lists, videos = raw_dir / "ucfTrainTestlist", raw_dir / "UCF-101"
        if not videos.is_dir():
            raise DataError(
                f"{raw_dir} has no UCF-101/ video folder: pass --raw_dir=<the "
                "directory holding UCF-101/ and ucfTrainTestlist/>"
            )
        class_index = lists / "classInd.txt"
        official = read_list(class_index, column=-1)
        missing = [c for c in CLASS_NAMES if c not in official]
        if missing:
            raise DataError(
                f"{class_index} lacks class {missing[0]!r}: use classInd.txt of the "
                "official UCF101 split archive"
            )
        label = {c: i for i, c in enumerate(CLASS_NAMES)}
        train = [
            c
            for c in read_list(lists / f"trainlist0{config.split}.txt")
            if c.split("/")[0] in label
        ]
        test = [
            c for c in read_list(lists / f"testlist0{config.split}.txt") if c.split("/")[0] in label
        ]
        held_out = validation_groups(train, config.val_fraction, config.seed)
        splits = {
            common.TRAIN: [c for c in train if group_of(c) not in held_out],
            common.VALIDATION: [c for c in train if group_of(c) in held_out],
            common.TEST: test,
        }
        return [
            common.Example(
                split=split,
                id=pathlib.PurePosixPath(clip).stem,
                label=label[clip.split("/")[0]],
                audio=videos / clip,
                video=videos / clip,
            )
            for split, clips in splits.items()
            for clip in clips
        ]


def _run(argv: Sequence[str] | None) -> epath.Path:
    parser = common.parser(__doc__.splitlines()[0], default_frame_size=DEFAULT_FRAME_SIZE)
    parser.add_argument(
        "--split", type=int, default=1, choices=(1, 2, 3), help="official train/test split"
    )
    parser.add_argument(
        "--val_fraction",
        type=float,
        default=VAL_FRACTION,
        help="share of each class's training groups held out for validation",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the validation draw (default: MLB's 109 / 19 / 337)",
    )
    args = parser.parse_args(argv)
    config = make_config(
        args.split, args.frame_size, val_fraction=args.val_fraction, seed=args.seed
    )
    return common.convert(
        UCF51, config, raw_dir=args.raw_dir, out_dir=args.out_dir, run=common.run_options(args)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    return common.main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
