"""AVE -> TFRecords: the official train/val/test lists, 16 kHz log-PSD, 4 frames of the event.

    python -m data_prep.ave --raw_dir=AVE_Dataset --out_dir=DATA [--frame_size=256x341]

Each row ``Category&VideoID&Quality&StartTime&EndTime`` names an event segment of AVE/<id>.mp4.
Audio: 16 kHz mono, cut to [Start, End), tiled to 10 s (160,000 samples), scipy spectrogram
(nperseg 512, noverlap 353: hop 159, Tukey window, PSD), ln(PSD + 1e-7) -> float32 [257, 1004].
Video: the first frame of the first 4 whole seconds in [Start, End] -> uint8 [4, H, W, 3].
Rows are deduplicated by VideoID within a split, first row wins (data_prep/README.md, "AVE").
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence

from etils import epath

from data_prep import common, media
from mlb_jax.data.schema import DataError

# MLB's label order (AVE_Dataset.py).
CLASS_NAMES = (
    "Church bell",
    "Male speech, man speaking",
    "Bark",
    "Fixed-wing aircraft, airplane",
    "Race car, auto racing",
    "Female speech, woman speaking",
    "Helicopter",
    "Violin, fiddle",
    "Flute",
    "Ukulele",
    "Frying (food)",
    "Truck",
    "Shofar",
    "Motorcycle",
    "Acoustic guitar",
    "Train horn",
    "Clock",
    "Banjo",
    "Goat",
    "Baby cry, infant cry",
    "Bus",
    "Chainsaw",
    "Cat",
    "Horse",
    "Toilet flush",
    "Rodents, rats, mice",
    "Accordion",
    "Mandolin",
)
SPLIT_FILES = {
    common.TRAIN: "trainSet.txt",
    common.VALIDATION: "valSet.txt",
    common.TEST: "testSet.txt",
}
# First line of Annotations.txt; tolerated in the split files too.
HEADER = "Category&VideoID&Quality&StartTime&EndTime"

AUDIO = media.AudioSettings(
    sample_rate=16000,
    num_samples=10 * 16000,
    fit="tile",
    transform="log_psd",
    n_fft=512,
    hop_length=512 - 353,
)
NUM_FRAMES = 4


def make_config(frame_size: tuple[int, int] = common.DEFAULT_FRAME_SIZE):
    """The config of the official split with frames of `frame_size` (H, W)."""
    return common.ConverterConfig(
        name=common.sized_name("official", frame_size),
        description="AVE, official train/val/test lists, event segments, 28 classes.",
        class_names=CLASS_NAMES,
        audio=AUDIO,
        frames=media.FrameSettings(NUM_FRAMES, *frame_size, top_up=True),
    )


def read_split_file(path: pathlib.Path) -> list[tuple[int, str, str, int, int]]:
    """Rows of an AVE list file, split on '&' only (class names contain commas and spaces).

    Returns:
        (line number, category, video id, start s, end s) per row; blank lines and a header
        line are left out.

    Raises:
        DataError: a malformed row or an unknown category (naming file and line).
    """
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line == HEADER:
            continue
        fields = line.split("&")
        try:
            category, video_id, _, start, end = fields
            rows.append((number, category, video_id, int(start), int(end)))
        except ValueError:
            raise DataError(
                f"{path}:{number}: {line!r} is not {HEADER} with integer "
                "seconds: fix the row or use the official list file"
            ) from None
        if category not in CLASS_NAMES:
            raise DataError(
                f"{path}:{number}: unknown category {category!r}: AVE has the 28 "
                "classes of data_prep/ave.py CLASS_NAMES; fix the row"
            )
    return rows


class AVE(common.ConvertingBuilder):
    """AVE (Tian et al., ECCV 2018): audio-visual events in 10-s YouTube clips, 28 classes."""

    name = "ave"
    HOMEPAGE = "https://github.com/YapengTian/AVE-ECCV18"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download AVE_Dataset (link in github.com/YapengTian/AVE-ECCV18) and unpack it, so that the
    raw directory holds AVE/<VideoID>.mp4, trainSet.txt, valSet.txt and testSet.txt.
    """

    def list_examples(self, raw_dir: pathlib.Path) -> list[common.Example]:
        """Lists each split's first row per VideoID; an empty event segment is skipped."""
        if not (raw_dir / "AVE").is_dir():
            raise DataError(
                f"{raw_dir} has no AVE/ video folder: pass --raw_dir=<AVE_Dataset, "
                "holding AVE/ and trainSet.txt, valSet.txt, testSet.txt>"
            )
        examples = []
        for split, file_name in SPLIT_FILES.items():
            path = raw_dir / file_name
            if not path.is_file():
                raise DataError(
                    f"AVE split file missing: {path}; AVE_Dataset/ of the official "
                    "download has trainSet.txt, valSet.txt and testSet.txt"
                )
            seen = set()
            for number, category, video_id, start, end in read_split_file(path):
                if video_id in seen:  # several events of one video: the reference keeps the first
                    continue
                seen.add(video_id)
                empty = f"{file_name}:{number}: empty event segment [{start}, {end}] s"
                examples.append(
                    common.Example(
                        split=split,
                        id=video_id,
                        label=CLASS_NAMES.index(category),
                        audio=raw_dir / "AVE" / f"{video_id}.mp4",
                        video=raw_dir / "AVE" / f"{video_id}.mp4",
                        start_s=start,
                        end_s=end,
                        skip_reason=empty if end <= start else None,
                    )
                )
        return examples


def _run(argv: Sequence[str] | None) -> epath.Path:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    return common.convert(
        AVE,
        make_config(args.frame_size),
        raw_dir=args.raw_dir,
        out_dir=args.out_dir,
        run=common.run_options(args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    return common.main(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
