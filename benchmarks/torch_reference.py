"""A PyTorch implementation of the benchmarked model and MLB train step, for speed comparisons.

Written from the mathematics in docs/METHODS.md (joint-and-multiloss, mlb), not copied from
any repository, and kept independent of JAX so that it can be timed on its own. It mirrors
``mlb_jax`` exactly:

* encoders: torchvision-style BasicBlock ResNet-18 (7x7/2 stem, 3x3/2 max-pool, four stages of
  two blocks, widths 1x 2x 4x 8x ``base_width``), no bias in convolutions, BatchNorm
  momentum 0.1 (PyTorch convention) and epsilon 1e-5; conv kernels Kaiming-normal (fan_out,
  ReLU gain), BatchNorm weight ~ N(1, 0.02) and bias 0;
* audio ``[B, 1, F, T]`` through the ResNet, global average pooling -> ``[B, D]``;
* video ``[B, T, 3, H, W]``: frames folded into the batch, ResNet, mean over time and space;
* late-linear fusion ``z = sum_m W_m x_m + b``: bias-free per-modality linears plus one shared
  bias; unimodal heads are ordinary linears;
* multi-loss ``CE(z) + w * sum_m CE(head_m)``;
* MLB: the score of modality m is the batch mean of the unimodal head's softmax probability of
  the true class; ``r_m = (mean_{j != m} s_j + eps) / (s_m + eps)``,
  ``beta_m = beta_max if r_m > 1 else 2``, ``k_m = 1 + (beta_m - 1) tanh(alpha (r_m - 1))``;
  every gradient of modality m's encoder, head and fusion linear is multiplied by ``k_m``
  before the optimiser (the fusion bias is not scaled);
* SGD with momentum 0.9 and coupled weight decay (``torch.optim.SGD``).

Usage (the model only)::

    model = MultimodalNet(num_classes=6, base_width=64)
    step = TrainStep(model, method="mlb", lr=0.01)
    metrics = step(audio, video, labels)
"""

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

SCORE_EPS = 1e-8
METHODS = ("joint", "multiloss", "mlb")
MODALITIES = ("audio", "video")


def _conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int
) -> nn.Sequential:
    """A bias-free convolution followed by BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        ),
        nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (1x1 conv-BN when reshaping)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        """Builds the block.

        Args:
            in_channels: input channels.
            out_channels: output channels.
            stride: stride of the first convolution and of the shortcut.
        """
        super().__init__()
        self.conv1 = _conv_bn(in_channels, out_channels, 3, stride, 1)
        self.conv2 = _conv_bn(out_channels, out_channels, 3, 1, 1)
        self.downsample = (
            _conv_bn(in_channels, out_channels, 1, stride, 0)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps [N, C_in, H, W] to [N, C_out, H / stride, W / stride]."""
        y = F.relu(self.conv1(x))
        y = self.conv2(y)
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class ResNet18(nn.Module):
    """ResNet-18 feature extractor (no pooling, no classifier) on NCHW images."""

    def __init__(self, in_channels: int, base_width: int = 64):
        """Builds the network.

        Args:
            in_channels: image channels.
            base_width: width of the first stage.
        """
        super().__init__()
        self.stem = _conv_bn(in_channels, base_width, 7, 2, 3)
        blocks = []
        width = base_width
        for stage, multiple in enumerate((1, 2, 4, 8)):
            out_width = base_width * multiple
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(width, out_width, stride))
                width = out_width
        self.blocks = nn.Sequential(*blocks)
        self.out_features = width
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps [N, C, H, W] to the final feature map [N, 8 * base_width, H / 32, W / 32]."""
        x = F.max_pool2d(F.relu(self.stem(x)), kernel_size=3, stride=2, padding=1)
        return self.blocks(x)


class AudioEncoder(nn.Module):
    """Spectrogram [B, 1, F, T] -> ResNet-18 -> global average pool -> [B, D]."""

    def __init__(self, base_width: int = 64):
        """Builds the encoder with a single input channel."""
        super().__init__()
        self.resnet = ResNet18(1, base_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encodes [B, 1, F, T] into [B, D]."""
        return self.resnet(x).mean(dim=(2, 3))


class VideoEncoder(nn.Module):
    """Clip [B, T, 3, H, W] -> frames folded into the batch -> ResNet-18 -> mean -> [B, D]."""

    def __init__(self, base_width: int = 64):
        """Builds the encoder for RGB frames."""
        super().__init__()
        self.resnet = ResNet18(3, base_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encodes [B, T, 3, H, W] into [B, D]: mean over frames and space."""
        batch, frames = x.shape[:2]
        maps = self.resnet(x.reshape(batch * frames, *x.shape[2:]))
        return maps.reshape(batch, frames, *maps.shape[1:]).mean(dim=(1, 3, 4))


class MultimodalNet(nn.Module):
    """Audio and video encoders, unimodal heads and late-linear fusion."""

    def __init__(self, num_classes: int, base_width: int = 64):
        """Builds the model.

        Args:
            num_classes: K.
            base_width: ResNet base width (feature width D = 8 * base_width).
        """
        super().__init__()
        self.encoders = nn.ModuleDict(
            {"audio": AudioEncoder(base_width), "video": VideoEncoder(base_width)}
        )
        dim = 8 * base_width
        self.heads = nn.ModuleDict({m: nn.Linear(dim, num_classes) for m in MODALITIES})
        self.fusion = nn.ModuleDict(
            {m: nn.Linear(dim, num_classes, bias=False) for m in MODALITIES}
        )
        bound = 1.0 / math.sqrt(dim)
        self.fusion_bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))

    def forward(
        self, audio: torch.Tensor, video: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns fused logits [B, K] and the unimodal logits {modality: [B, K]}."""
        features = {"audio": self.encoders["audio"](audio), "video": self.encoders["video"](video)}
        fused = sum(self.fusion[m](features[m]) for m in MODALITIES) + self.fusion_bias
        return fused, {m: self.heads[m](features[m]) for m in MODALITIES}

    def modality_parameters(self, modality: str) -> Iterator[nn.Parameter]:
        """The parameters whose gradients MLB scales by modality ``modality``'s coefficient."""
        yield from self.encoders[modality].parameters()
        yield from self.heads[modality].parameters()
        yield from self.fusion[modality].parameters()


def mlb_coefficients(
    scores: dict[str, torch.Tensor], alpha: float, beta_max: float
) -> dict[str, torch.Tensor]:
    """MLB's k_m from the modality scores (any number of modalities >= 2)."""
    names = list(scores)
    values = torch.stack([scores[n] for n in names])
    others = (values.sum() - values) / (len(names) - 1)
    ratios = (others + SCORE_EPS) / (values + SCORE_EPS)
    beta = torch.where(ratios > 1.0, torch.full_like(ratios, beta_max), torch.full_like(ratios, 2))
    k = 1.0 + (beta - 1.0) * torch.tanh(alpha * (ratios - 1.0))
    return {n: k[i] for i, n in enumerate(names)}


class TrainStep:
    """One optimisation step of joint training, multi-loss or MLB on a :class:`MultimodalNet`."""

    def __init__(
        self,
        model: MultimodalNet,
        *,
        method: str = "mlb",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        alpha: float = 1.0,
        beta_max: float = 4.0,
        unimodal_weight: float = 1.0,
    ):
        """Builds the step.

        Args:
            model: the model; trained in place.
            method: 'joint', 'multiloss' or 'mlb'.
            lr: SGD learning rate.
            momentum: SGD momentum.
            weight_decay: coupled L2 weight decay (added to the gradient after MLB scaling).
            alpha: MLB tanh steepness.
            beta_max: MLB acceleration cap.
            unimodal_weight: weight of each unimodal cross-entropy (multiloss, mlb).

        Raises:
            ValueError: for an unknown method.
        """
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
        self.model = model
        self.method = method
        self.alpha = alpha
        self.beta_max = beta_max
        self.unimodal_weight = unimodal_weight
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        self.groups = {m: list(model.modality_parameters(m)) for m in MODALITIES}

    def __call__(
        self, audio: torch.Tensor, video: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Runs forward, backward, MLB scaling and the SGD update.

        Args:
            audio: [B, 1, F, T].
            video: [B, T, 3, H, W].
            labels: [B] int64.

        Returns:
            Detached scalars: 'loss', and 'k/<modality>' for MLB.
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        fused, unimodal = self.model(audio, video)
        loss = F.cross_entropy(fused, labels)
        if self.method != "joint":
            for logits in unimodal.values():
                loss = loss + self.unimodal_weight * F.cross_entropy(logits, labels)
        loss.backward()
        metrics = {"loss": loss.detach()}
        if self.method == "mlb":
            with torch.no_grad():
                scores = {
                    m: F.softmax(logits.float(), dim=-1).gather(1, labels[:, None]).mean()
                    for m, logits in unimodal.items()
                }
                k = mlb_coefficients(scores, self.alpha, self.beta_max)
                for m, params in self.groups.items():
                    torch._foreach_mul_([p.grad for p in params if p.grad is not None], k[m])
                metrics |= {f"k/{m}": k[m] for m in MODALITIES}
        self.optimizer.step()
        return metrics
