"""Shared experiment configs: the synthetic demo and the reference ResNet-18 recipe.

The files under configs/ are thin: each calls one of these and overrides what is its own, so
a field and its one-line comment live in exactly one place.
"""

import ml_collections
from ml_collections import config_dict

from mlb_jax import recipes
from mlb_jax.methods import (
    AGM,
    MLB,
    MSLR,
    OGM,
    PMR,
    Ensemble,
    MMCosine,
    MMPareto,
    ReconBoost,
    Unimodal,
    default_block,
)


def synthetic_knobs() -> ml_collections.ConfigDict:
    """The synthetic generator's default knobs (`mlb_jax.data.synthetic.SyntheticConfig`).

    Imported here, not at module level, because the data layer imports TensorFlow.
    """
    from mlb_jax.data.synthetic import SyntheticConfig, knob_names

    defaults = SyntheticConfig()
    return ml_collections.ConfigDict({name: getattr(defaults, name) for name in knob_names()})


def synthetic_av() -> ml_collections.ConfigDict:
    """The demo config (configs/synthetic_av.py): MLB on the embedded synthetic dataset."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds model init, dropout and the data order
    # Reference recipe (mlb_jax/recipes.py) filling the fields left None; '' = none.
    c.recipe = ""
    c.progress = True  # show a progress bar per epoch

    c.data = ml_collections.ConfigDict()
    c.data.name = "synthetic_av"  # 'synthetic_av' (generated) or any converted dataset
    c.data.dir = ""  # converted dataset directory (unused for synthetic_av)
    c.data.cache_dir = "~/.cache/mlb_jax/data"  # where the synthetic dataset is cached
    c.data.cache = True  # keep decoded splits in memory (small datasets only)
    c.data.train_split = "train"  # split names as written by the converter
    c.data.val_split = "validation"  # model selection (best epoch) uses this split
    c.data.test_split = "test"  # reported accuracy comes from this split
    # Generator knobs: their defaults (and the demo's dataset) are `SyntheticConfig`'s, each
    # documented there and in mlb_jax/data/README.md; override as --config.data.synthetic.<knob>.
    c.data.synthetic = synthetic_knobs()
    # Training-time frame augmentation (mlb_jax/data/augment.py): torchvision's
    # RandomResizedCrop + RandomHorizontalFlip, as the reference loaders; evaluation resizes.
    c.data.augment = ml_collections.ConfigDict()
    c.data.augment.enabled = False  # random crop + flip of training frames
    c.data.augment.size = ()  # model input [H, W] of train crops and eval resizes; () = stored
    c.data.augment.crop_scale = (0.08, 1.0)  # crop area range, fraction of the stored frame
    c.data.augment.crop_ratio = (3 / 4, 4 / 3)  # crop width / height range
    c.data.augment.flip = True  # horizontal flip with probability 0.5
    c.data.augment.per_clip = False  # one crop/flip per clip (UCF101) or per frame (CREMA-D, AVE)
    # Sequence modalities (mlb_jax/data/README.md): steps L per example and how to get there,
    # for all of them ('64', 'resample') or per modality ('imu=128,skeleton=40').
    c.data.sequence_length = ""  # '' = each sequence modality's stored maximum length
    c.data.sequence_fit = "head"  # head (first L) | center (middle L) | resample (to exactly L)

    c.model = ml_collections.ConfigDict()
    c.model.modalities = {  # name -> encoder kind and input channels
        "audio": {"kind": "audio", "in_channels": 1},
        "video": {"kind": "video", "in_channels": 3},
    }
    c.model.base_width = 8  # ResNet-18 width (64 = standard); 8 keeps the demo CPU-sized
    # The CPU convolution plan buys nothing at width 8 and compiles 1.5-2.3x longer
    # (benchmarks/conv_choice.py); reference_resnet's full-width encoders use 'auto'.
    # Convolutions: auto (CPU: the fastest step of plan, plan_wide and xla, timed; XLA
    # elsewhere) | plan | plan_wide | tuned | xla.
    c.model.conv = "xla"
    # 'tuned' only: extra scratch memory a layer's algorithm may take over XLA's convolution,
    # in multiples of the layer's input (inf: fastest; 0: XLA's memory; mlb_jax.models.conv_tune).
    c.model.conv_max_scratch = float("inf")
    c.model.fusion = "late_linear"  # late_linear | mid_mlp | film | gated | transformer
    c.model.fusion_hidden = 64  # hidden width of mid_mlp / transformer fusion
    c.model.dropout = 0.1  # dropout in the fusion MLP / transformer

    # Method settings (docs/METHODS.md): every default comes from the method dataclasses in
    # mlb_jax/methods/; only the demo's deliberate overrides are written out as numbers.
    c.method = ml_collections.ConfigDict()
    c.method.name = "mlb"  # any of mlb_jax.methods.METHODS: joint, multiloss, mlb, ogm, ...
    c.method.unimodal_weight = MLB.unimodal_weight  # weight of each unimodal CE (multiloss, mlb)
    c.method.alpha = MLB.alpha  # MLB tanh steepness
    # Demo override of MLB's 2.0 (the paper's rule): lets the slow video be sped up to 4x.
    c.method.beta_max = 4.0  # MLB acceleration cap
    c.method.score = MLB.score  # MLB score: probability (paper) | accuracy
    c.method.score_ema = MLB.score_ema  # EMA decay of MLB scores (0 = per-step, as the paper)
    c.method.placement = MLB.placement  # gradients (reference code) | updates (per-modality LR)
    # Per-method blocks: read only by their method; each field is documented on the class.
    c.method.ogm = default_block(OGM)  # ogm and ogm_ge: mlb_jax.methods.OGM
    c.method.mslr = default_block(MSLR)  # mslr: mlb_jax.methods.MSLR
    # Demo override of MSLR's 1 each: slow the dominant audio, speed up video from epoch 0.
    c.method.mslr.init_lr = {"audio": 0.7, "video": 1.3}  # static multiplier per modality
    c.method.mmpareto = default_block(MMPareto)  # mmpareto: mlb_jax.methods.MMPareto
    c.method.agm = default_block(AGM)  # agm: mlb_jax.methods.AGM
    c.method.pmr = default_block(PMR)  # pmr: mlb_jax.methods.PMR
    c.method.mmcosine = default_block(MMCosine)  # mmcosine: mlb_jax.methods.MMCosine
    c.method.reconboost = default_block(ReconBoost)  # reconboost: mlb_jax.methods.ReconBoost
    # The paper's reference rows (docs/METHODS.md (unimodal-ensemble-and-pretrained-fusion)).
    c.method.modality = Unimodal.modality  # unimodal: the one modality trained, e.g. 'audio'
    # ensemble, pre_frozen, pre_finetuned: modality -> finished unimodal run directory.
    c.method.ensemble = default_block(Ensemble)  # ensemble: mlb_jax.methods.Ensemble
    c.method.ensemble.workdirs = {m: "" for m in c.model.modalities}
    c.method.pretrained = ml_collections.ConfigDict()  # pre_frozen, pre_finetuned
    c.method.pretrained.workdirs = {m: "" for m in c.model.modalities}

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 12  # training epochs
    c.train.batch_size = 64  # global batch (divisible by the device count)
    c.train.eval_batch_size = 200  # global eval batch (padded; divisible by device count)
    c.train.optimizer = "sgd"  # sgd (momentum; the paper's Eq. 2) | adam
    c.train.lr = 0.01  # base learning rate
    c.train.momentum = 0.9  # SGD momentum
    c.train.weight_decay = 1e-4  # coupled L2 weight decay
    c.train.schedule = "cosine"  # constant | cosine | step | mlb_warm_restarts
    c.train.warmup_epochs = 0  # linear warm-up epochs (cosine)
    c.train.step_epochs = 10  # step schedule: epochs between decays
    c.train.step_gamma = 0.1  # step schedule: decay factor
    c.train.warmup_steps = 0  # mlb_warm_restarts: constant-LR steps before the restarts
    c.train.grad_clip_norm = 0.0  # global-norm clipping (0 = off)
    c.train.early_stopping_patience = (
        0  # epochs without a better validation before stopping; 0 = off
    )
    c.train.log_every = 10  # steps between logged train metrics (TensorBoard, plots)
    c.train.num_devices = 0  # devices in the ('data',) mesh (0 = all)
    c.train.keep_checkpoints = 2  # latest checkpoints kept
    c.train.checkpoint_every = 1  # epochs between checkpoints (a kill repeats at most these)
    c.train.eval_test_every_epoch = False  # test split every epoch too (else: best epoch only)
    c.train.keep_last_batch = False  # train on the last, smaller batch of an epoch too
    # Per-encoder gradient norms and fused-vs-unimodal gradient cosines (mlb_jax/diagnostics.py):
    # 1 more forward and M + 1 more backward passes per step.
    c.train.diagnostics = False
    # XLA CPU's order of the step's operations (same bits): auto (memory with the CPU
    # convolution plan, else concurrency) | memory (fewer live buffers: 775 against 1405 MiB
    # of temporaries for the full-width planned step at 112x112) | concurrency (XLA's own).
    c.train.cpu_scheduler = "auto"

    c.probe = ml_collections.ConfigDict()
    c.probe.steps = 500  # full-batch Adam steps of the linear probes
    c.probe.lr = 0.05  # probe learning rate

    # End-of-run evaluation (mlb_jax/evaluate.py): evaluation.json, evaluation.md, figures.
    c.evaluate = ml_collections.ConfigDict()
    c.evaluate.enabled = True  # evaluate the best checkpoint on the test split after training
    c.evaluate.absent = "zeros"  # an absent modality's input in the subset pass: zeros | mean
    c.evaluate.noise_levels = (0.5, 1.0, 2.0)  # noise sigmas in input stds; () = no curves
    c.evaluate.noise_seed = 0  # seed of the robustness noise
    c.evaluate.stats_examples = 256  # training examples sampled for the input mean and std
    c.evaluate.calibration_bins = 15  # confidence bins of ECE and the reliability diagrams
    # modality -> finished unimodal run: the agreement matrices' reference ('' = own heads).
    c.evaluate.unimodal_workdirs = {m: "" for m in c.model.modalities}
    return c


def reference_resnet(dataset: str) -> ml_collections.ConfigDict:
    """`synthetic_av` set to the reference ResNet-18 set-up for a converted dataset.

    The newer MLB release's `run.sh` (docs/METHODS.md (hyper-parameters),
    (learning-rate-schedule)): Adam (0.9, 0.999, eps 1e-7) with coupled L2 1e-4, batch 32,
    constant LR for 780 steps then cosine warm restarts over global steps. The values here
    are a custom dataset's defaults (configs/custom_resnet.py); the reference datasets' configs
    then call `leave_to_recipe`, which hands the per-method fields to mlb_jax/recipes.py.

    Args:
      dataset: the converter's dataset name (informational; `data.dir` is what is read).
    """
    c = synthetic_av()
    c.data.name = dataset  # converted by data_prep.<dataset> (informational; data.dir is read)
    c.data.dir = ""  # required: --config.data.dir=<converted version dir, or a parent of one>
    c.data.cache = False  # stream from disk: 224x224 frames are too large to keep decoded
    c.data.augment.enabled = True  # the reference loaders' RandomResizedCrop(224) + flip
    c.data.augment.size = (224, 224)  # crops of the stored (larger) frames, resized to 224

    c.model.base_width = 64  # full ResNet-18 (widths 64/128/256/512), as the reference
    # CPU: the faster train step of the CPU plan and XLA's convolutions, timed once per machine
    # and step (mlb_jax/conv_auto.py); XLA's convolution elsewhere (README, "Speed").
    c.model.conv = "auto"
    c.model.fusion = "late_linear"  # MLB's default `cls_type: linear` (concat + one Linear)

    c.method.name = "mlb"  # override with --config.method.name=joint|multiloss|...
    c.method.placement = "gradients"  # raw gradient before Adam: the reference code's behaviour

    c.train.epochs = 100  # a fixed budget (the reference recipes: up to 1000-1500 epochs)
    c.train.batch_size = 32  # the reference's ResNet batch
    c.train.keep_last_batch = True  # the reference's loaders keep it (a multiple of the devices)
    c.train.eval_batch_size = 128  # any multiple of the device count; no effect on results
    c.train.optimizer = "adam"  # Adam (0.9, 0.999, eps 1e-7), as the reference
    c.train.momentum = 0.9  # unused by Adam
    c.train.weight_decay = 1e-4  # coupled L2 (PyTorch Adam weight_decay), `run.sh --wd 0.0001`
    c.train.schedule = "mlb_warm_restarts"  # constant LR, then cosine warm restarts
    c.train.warmup_steps = 780  # constant-LR steps before the restarts (reference: 780)
    return c


def custom_dataset() -> ml_collections.ConfigDict:
    """configs/custom.py: `reference_resnet` for any converted dataset, modalities from it.

    ``model.modalities`` is left empty: the trainer fills it from the dataset
    (`trainer.modalities_from_dataset`), ``model.encoders`` overriding the encoder per modality.
    """
    c = reference_resnet("manifest")  # --config.data.dir=DATA/manifest/<name> is required
    c.model.modalities = {}  # from the dataset: every modality it holds, encoder by kind
    c.model.encoders = ""  # per-modality encoder overrides: 'mfcc=conformer,imu=tcn'
    # Frames enter the model at their stored size (crops resized back to it): grayscale lips
    # or depth maps are often far smaller than the reference's 224.
    c.data.augment.size = ()
    c.method.ensemble.workdirs = {}  # one per modality, filled by the compare runner
    c.method.pretrained.workdirs = {}
    c.evaluate.unimodal_workdirs = {}

    c.method.alpha = 1.0  # tanh steepness; the reference used 0.5-2 per dataset: tune it
    c.method.beta_max = 2.0  # the paper's default (uncapped) rule; reference: 0.5-10: tune it
    c.train.lr = 1e-3  # the reference's ResNet LR for Joint / Multi-Loss (and MLB on AVE, UCF)
    return c


def leave_to_recipe(c: ml_collections.ConfigDict, dataset: str) -> ml_collections.ConfigDict:
    """Names `dataset`'s reference recipe and leaves every field it sets to it.

    Every path of `mlb_jax.recipes.RECIPE_FIELDS` becomes a typed placeholder (None, of the
    type of its current value, so `--config.x=...` still parses): `recipes.resolve`, called by
    the trainer, fills it from the recipe of `config.method.name`; an explicit value wins.

    Args:
      c: a config built by `reference_resnet`.
      dataset: a key of `mlb_jax.recipes.RECIPES` ('cremad', 'ave', 'ucf51').

    Returns:
      `c`, changed in place.
    """
    if dataset not in recipes.RECIPES:
        raise ValueError(f"unknown recipe {dataset!r}; choose one of {list(recipes.DATASETS)}")
    c.recipe = dataset  # mlb_jax/recipes.py: the per-method settings of the reference code
    for path in recipes.RECIPE_FIELDS:
        *parents, leaf = path.split(".")
        node = c
        for key in parents:
            node = node[key]
        node[leaf] = config_dict.placeholder(type(node[leaf]))
    return c


def per_modality(value: str, names: list[str] | tuple[str, ...], field: str) -> dict[str, str]:
    """Parses a per-modality config string: ``''``, ``'x'`` (every modality) or ``'a=x,b=y'``.

    Args:
        value: the field's value.
        names: the modalities it may name.
        field: the config field, for messages (e.g. ``'config.data.sequence_length'``).

    Returns:
        modality -> its value; ``{}`` for ``''``.

    Raises:
        ValueError: naming ``field``, for a modality that is not in ``names`` or a malformed item.
    """
    value = str(value).strip()
    if not value:
        return {}
    if "=" not in value:
        return {name: value for name in names}
    out = {}
    for item in value.split(","):
        name, sep, setting = (part.strip() for part in item.partition("="))
        if not sep or not name or not setting:
            raise ValueError(f"{field}={value!r}: write 'value' or 'modality=value,...'")
        if name not in names:
            raise ValueError(
                f"{field}={value!r}: {name!r} is not one of the modalities {list(names)}"
            )
        out[name] = setting
    return out
