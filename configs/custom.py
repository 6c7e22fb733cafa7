"""Any converted dataset, with encoders picked from its modalities, and MLB: no config to write.

Convert (a manifest of audio / video / .npy cells, data_prep/README.md "Manifest"), then train
one method per run, or compare methods:

    python -m data_prep.manifest --manifest=my/list.csv --out_dir=DATA --name=mydata
    python -m mlb_jax.train --config=configs/custom.py --workdir=runs/mydata/mlb \
        --config.data.dir=DATA/manifest/mydata
    python -m mlb_jax.compare --config=configs/custom.py \
        --config.data.dir=DATA/manifest/mydata --methods=joint,multiloss,mlb --seeds=0,1,2 \
        --workdir=runs/mydata_compare

`--config.data.dir` is the only required field. Classes, modalities, their kinds and shapes are
read from the converted dataset when the run starts (`trainer.modalities_from_dataset`, printed
and recorded in config.json): a spectrogram gets the audio ResNet-18, frames the video ResNet-18
with their channel count (1 for grayscale or depth, 3 for RGB), a sequence of width D >= 64 (a
pretrained embedding) the Conformer and a narrower one (MFCCs, joints, IMU) the temporal
convolution. Override per modality: `--config.model.encoders='mfcc=conformer,imu=tcn'`;
sequence lengths: `--config.data.sequence_length=...` / `--config.data.sequence_fit=...`
(mlb_jax/data/README.md). Frames enter the model at their stored size (random crops resized
back to it during training); `--config.data.augment.size=224,224` resizes them.

The dataset's `split` values name the splits: this config reads `train`, `validation`
(best-epoch selection) and `test` (reported accuracy); other names need
`--config.data.train_split=...`, `--config.data.val_split=...`, `--config.data.test_split=...`.

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

from mlb_jax.config_base import custom_dataset


def get_config() -> ml_collections.ConfigDict:
    """Returns the custom-dataset config: everything about the data is read from data.dir."""
    return custom_dataset()
