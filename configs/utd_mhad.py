"""UTD-MHAD: depth video, skeleton joints and a wearable inertial sensor (M = 3), CPU-sized.

Convert once (data_prep/README.md, "UTD-MHAD"), then train one method, or compare them all
(benchmarks/utd_mhad.py runs the README's table):

    python -m data_prep.utd_mhad --raw_dir=../shared/data/utd_mhad --out_dir=DATA
    python -m mlb_jax.train --config=configs/utd_mhad.py --config.data.dir=DATA \
        --workdir=runs/utd_mhad/mlb
    python -m mlb_jax.compare --config=configs/utd_mhad.py --config.data.dir=DATA \
        --methods=joint,multiloss,mlb,unimodal --seeds=0,1,2 --workdir=runs/utd_mhad_compare

Cross-subject protocol: subjects 1, 3, 5, 7 train (trial 4 of each is the validation split that
picks the best epoch), subjects 2, 4, 6, 8 are the test split. 27 classes.

Encoders, chosen to train on a 2-core CPU in about a minute per run:

* depth (uint16 [8, 64, 64, 1], millimetres / 4096): the video ResNet-18 at base width 8, one
  input channel, frames resized to 32 x 32 (each frame encoded, features averaged over time);
* skeleton ([T <= 125, 60] hip-centred joints) and inertial ([T' <= 326, 6], g and rad/s):
  the temporal convolution encoder (3 layers, width 64), each sequence resampled to a fixed
  length (48 skeleton frames, 96 inertial samples: every step valid, the whole action kept).

Training: Adam, lr 1e-3, batch 16, cosine decay over 10 epochs, best-on-validation epoch. No
frame augmentation (a horizontal flip would turn "swipe left" into "swipe right"). MLB uses the
paper's default rule (beta_max 2) with alpha 1: not tuned for this dataset. The end-of-run
evaluation (modality subsets, Shapley values, robustness) is off so that the benchmark's 48
runs fit in 40 minutes; turn it on with `--config.evaluate.enabled=True`, or evaluate a
finished run with `python -m mlb_jax.evaluate --workdir=RUN`.
"""

import ml_collections

from mlb_jax.config_base import synthetic_av


def get_config() -> ml_collections.ConfigDict:
    """Returns the UTD-MHAD config (data.dir required)."""
    c = synthetic_av()
    c.progress = False  # many short runs in the benchmark: one line per epoch is enough
    c.data.name = "utd_mhad"  # converted by data_prep.utd_mhad (informational)
    c.data.dir = ""  # required: --config.data.dir=<the converter's out_dir or below>
    c.data.cache = True  # 861 small examples: keep them decoded
    c.data.augment.size = (32, 32)  # depth frames resized to 32 x 32 (stored 64 x 64)
    c.data.sequence_length = "skeleton=48,inertial=96"
    c.data.sequence_fit = "resample"

    tcn = {"width": 64, "depth": 3, "kernel": 5, "dropout": 0.1}
    c.model.modalities = {
        "depth": {"kind": "video", "in_channels": 1},
        "skeleton": {"kind": "tcn", "in_features": 60, **tcn},
        "inertial": {"kind": "tcn", "in_features": 6, **tcn},
    }
    c.model.base_width = 8  # the depth ResNet-18's width (64 = standard)
    c.model.conv = "xla"  # the CPU plan buys nothing at width 8 and compiles longer
    c.method.mslr.init_lr = {m: 1.0 for m in c.model.modalities}
    c.method.ensemble.workdirs = {m: "" for m in c.model.modalities}
    c.method.pretrained.workdirs = {m: "" for m in c.model.modalities}
    c.evaluate.unimodal_workdirs = {m: "" for m in c.model.modalities}

    c.method.beta_max = 2.0  # the paper's default rule (the demo uses 4)
    c.train.epochs = 10
    c.train.batch_size = 16
    c.train.eval_batch_size = 112
    c.train.optimizer = "adam"
    c.train.lr = 1e-3
    c.train.weight_decay = 1e-4
    c.train.schedule = "cosine"
    c.train.keep_last_batch = True  # 324 training examples: keep the last 4
    c.train.checkpoint_every = 5  # a save costs about a second: a third of a run's time
    c.probe.steps = 200
    c.evaluate.enabled = False  # see the docstring
    return c
