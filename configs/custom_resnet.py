"""Any audio-video dataset listed in a CSV manifest, with ResNet-18 encoders and MLB.

List the clips in a CSV (`id,split,label,audio,video`; data_prep/README.md, "Manifest"),
convert, then train one method per run:

    python -m data_prep.manifest --manifest=my/list.csv --out_dir=DATA --name=mydata
    python -m mlb_jax.train --config=configs/custom_resnet.py --workdir=runs/mydata/mlb \
        --config.data.dir=DATA/manifest/mydata
    python -m mlb_jax.train --config=configs/custom_resnet.py --workdir=runs/mydata/joint \
        --config.data.dir=DATA/manifest/mydata --config.method.name=joint
    python -m mlb_jax.compare --config=configs/custom_resnet.py \
        --config.data.dir=DATA/manifest/mydata --methods=joint,multiloss,mlb --seeds=0,1,2 \
        --workdir=runs/mydata_compare

`--config.data.dir` is required (the version directory or any parent holding exactly one
dataset). Classes, their number and the spectrogram / frame shapes are read from the converted
dataset's info when the run starts; nothing about them is set here. The manifest's `split`
column names the splits: this config reads `train`, `validation` (best-epoch selection) and
`test` (reported accuracy); other names need `--config.data.train_split=...`,
`--config.data.val_split=...` and `--config.data.test_split=...` (the same split may serve
as validation and test, at the cost of an optimistic estimate).

Defaults follow MLB's ResNet recipe (docs/METHODS.md (hyper-parameters),
(learning-rate-schedule)): Adam (eps 1e-7) with coupled L2 1e-4, LR 1e-3 (the reference's
value for MLB, Joint and Multi-Loss on every dataset), batch 32, 780 constant-LR steps then
cosine warm restarts. The MLB coefficient uses alpha 1 and the paper's default rule
(beta_max 2); the reference tuned both per dataset (alpha 0.5-2, beta_max 0.5-10), so tune
`--config.method.alpha` and `--config.method.beta_max` on the validation split. Training runs a
fixed 100 epochs and keeps the best-on-validation checkpoint (the reference stops early instead;
`--config.train.early_stopping_patience=N` does too). `method.placement='gradients'` is the
reference code's behaviour (the multiplier acts on the raw gradient before Adam;
docs/METHODS.md (placement)).
For a small dataset, a smaller batch (`--config.train.batch_size`, a multiple of the device
count) gives more steps per epoch; the 780-step constant phase is counted in steps, not epochs.
"""

import ml_collections

from mlb_jax.config_base import reference_resnet


def get_config() -> ml_collections.ConfigDict:
    """Returns synthetic_av's fields set for a manifest dataset with full ResNet-18 encoders."""
    c = reference_resnet("manifest")  # --config.data.dir=DATA/manifest/<name> is required

    c.data.train_split = "train"  # a value of the manifest's split column
    c.data.val_split = "validation"  # a value of the split column; selects the best epoch
    c.data.test_split = "test"  # a value of the split column; the reported accuracy

    c.method.alpha = 1.0  # tanh steepness; the reference used 0.5-2 per dataset: tune it
    c.method.beta_max = 2.0  # the paper's default (uncapped) rule; reference: 0.5-10: tune it

    c.train.lr = 1e-3  # the reference's ResNet LR for Joint / Multi-Loss (and MLB on AVE, UCF)
    return c
