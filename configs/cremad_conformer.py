"""CREMA-D with the paper's Conformer encoders on precomputed feature sequences, and MLB.

The paper's second encoder family (Section 4.2; kkontras/MLB@68ad48d
`configs/CREMA_D/release/vit/MLB.json`, commands `run.sh:19-29`): wav2vec2-large-robust
features (its 12th layer, 1024-d) for audio and EfficientNet-B2 face features (1408-d) for
video, each refined by a 5-layer Conformer of width 512, mean-pooled, then the late linear
fusion. Extract the features and convert them as data_prep/README.md ("Pretrained feature
sequences") shows, then:

    python -m mlb_jax.train --config=configs/cremad_conformer.py \
        --config.data.dir=DATA/manifest/cremad_conformer --workdir=runs/cremad_conformer/mlb
    python -m mlb_jax.compare --config=configs/cremad_conformer.py \
        --config.data.dir=DATA/manifest/cremad_conformer \
        --methods=joint,multiloss,mlb --seeds=0,1,2 --workdir=runs/cremad_conformer_compare

The manifest's modality columns must be named `audio` ([T, 1024]) and `face` ([T, 1408]).
Settings and sources (run.sh lines at 68ad48d; `vit/MLB.json` = the release config):

* optimiser Adam, lr 5e-5, coupled L2 5e-6 (run.sh:19-29, every Conformer line), batch 8
  (`vit/MLB.json` `training_params.batch_size`), the default schedule of the ResNet recipe
  (constant for 780 steps, then cosine warm restarts; `default_config_cremad.json`);
* Conformer: 5 blocks, d_model 512, dropout 0.1 (`vit/MLB.json` encoder args; DATASETS.md
  §1.7); 8 heads and depthwise kernel 31 (the reference's Conformer block, as in its `tf`
  fusion, docs/METHODS.md); rotary positions here, relative ones there (a deliberate
  difference: the encoder has no Transformer-XL relative attention);
* MLB alpha 5.0 with the default rule (beta_max 2: run.sh:29 passes no `--tanh_mode_beta`);
* sequences: face features truncated to their first 150 frames (the reference's collate),
  audio kept whole (the reference pads to the batch maximum; here to the dataset's longest);
* early stopping after 300 steps without improvement in the reference (`n_steps_stop`); here
  patience counts epochs: 100 (the CREMA-D default), 1500 epochs at most.

Deliberate differences: the wav2vec2 layers are frozen (precomputed once; the reference
fine-tunes its first 12 layers), and the features are not normalised with the reference's
per-fold statistics (`wav_norm_16000_fold{f}.pkl`, `norm_face_path_fold{f}.pkl`): the waveform
is normalised before extraction and each Conformer block starts with a LayerNorm.
"""

import ml_collections

from mlb_jax.config_base import reference_resnet


def get_config() -> ml_collections.ConfigDict:
    """Returns the CREMA-D Conformer-on-features config (data.dir required)."""
    c = reference_resnet("manifest")  # --config.data.dir=DATA/manifest/<name> is required
    c.data.cache = False  # long 1024-d sequences: stream them
    c.data.sequence_length = "face=150"  # the reference's collate truncates faces to 150
    c.data.sequence_fit = "head"
    c.data.augment.enabled = False  # no frames modality

    conformer = {"dim": 512, "depth": 5, "heads": 8, "conv_kernel": 31, "dropout": 0.1}
    c.model.modalities = {
        "audio": {"kind": "conformer", "in_features": 1024, **conformer},
        "face": {"kind": "conformer", "in_features": 1408, **conformer},
    }
    c.method.ensemble.workdirs = {m: "" for m in c.model.modalities}
    c.method.pretrained.workdirs = {m: "" for m in c.model.modalities}
    c.evaluate.unimodal_workdirs = {m: "" for m in c.model.modalities}

    c.method.alpha = 5.0  # run.sh:29
    c.method.beta_max = 2.0  # the default rule: run.sh:29 passes no --tanh_mode_beta
    c.train.lr = 5e-5  # run.sh:19-29
    c.train.weight_decay = 5e-6  # run.sh:19-29
    c.train.batch_size = 8  # vit/MLB.json training_params.batch_size
    c.train.epochs = 1500  # the CREMA-D budget, with early stopping
    c.train.early_stopping_patience = 100  # CREMA-D default (the reference: 300 steps)
    return c
