"""Built-in model builders: ``mlp``, ``cnn1d``, ``cnn2d``, ``resnet``.

Every builder has the signature ``build(input_shape, num_classes, norm, **params) -> nn.Module`` and
declares the BN placements it supports with the ``placements`` tag, so callers can validate a
configuration before building anything (``MODELS.get(name).tags["placements"]``). ``fusable=True``
says that K built models can be trained as one (``models.fused``): their leaves are layers the
fused executor knows, and parent modules only compose children with layout-agnostic ops (``+``).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from models.config import Placement
from models.errors import ConfigError
from models.layers import NormSpec, batch_norm, norm_act_block
from models.registry import MODELS, Param

POST_PLACEMENTS = (
    Placement.BEFORE_ACTIVATION.value,
    Placement.AFTER_ACTIVATION.value,
    Placement.NONE.value,
)
ALL_PLACEMENTS = (*POST_PLACEMENTS, Placement.PRE_ACTIVATION.value)

_DROPOUT = Param("dropout", "float", 0.0, "dropout before the classifier", low=0.0, high=0.9)


class Reshape(nn.Module):
    """Reshape each sample to ``shape`` (e.g. (N, 40) signals to (N, 1, 40))."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def _channels_first(input_shape: tuple[int, ...], dims: int, model: str) -> tuple[int, ...]:
    """Per-sample shape as (C, *spatial) with ``dims`` spatial dims; a missing channel axis is 1."""
    shape = tuple(input_shape)
    if len(shape) == dims:
        shape = (1, *shape)
    if len(shape) != dims + 1:
        raise ConfigError(
            "dataset",
            f"model {model!r} needs samples of {dims} spatial dimension(s) with an optional "
            f"channel axis, got shape {list(input_shape)}",
        )
    return shape


# --- mlp ----------------------------------------------------------------------------------------


@MODELS.register(
    "mlp",
    params=(
        Param("width", "int", 256, "hidden units per layer", low=1, high=8192),
        Param("depth", "int", 2, "hidden layers", low=1, high=32),
        _DROPOUT,
    ),
    description="Multilayer perceptron on the flattened input.",
    placements=POST_PLACEMENTS,
    fusable=True,
)
def build_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    norm: NormSpec,
    width: int = 256,
    depth: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """MLP: ``depth`` x [linear, BN, ReLU] in placement order, then dropout and a linear head."""
    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(input_shape)
    for _ in range(depth):
        make = partial(lambda i, o, bias: nn.Linear(i, o, bias=bias), features, width)
        layers.append(norm_act_block(make, features, width, norm, dims=1))
        features = width
    layers += [nn.Dropout(dropout), nn.Linear(features, num_classes)]
    return nn.Sequential(*layers)


# --- cnn1d --------------------------------------------------------------------------------------


@MODELS.register(
    "cnn1d",
    params=(
        Param("channels", "int", 32, "channels of every conv layer", low=1, high=1024),
        Param(
            "depth",
            "int",
            3,
            "conv layers (kernel 5); the first ones halve the length",
            low=1,
            high=16,
        ),
        _DROPOUT,
    ),
    description="1-D CNN for signals such as MNIST-1D (input (L,) or (C, L)).",
    placements=POST_PLACEMENTS,
    fusable=True,
)
def build_cnn1d(
    input_shape: tuple[int, ...],
    num_classes: int,
    norm: NormSpec,
    channels: int = 32,
    depth: int = 3,
    dropout: float = 0.0,
) -> nn.Module:
    """1-D CNN after the MNIST-1D paper: conv(k=5) blocks, stride 2 while the length allows."""
    shape = _channels_first(input_shape, 1, "cnn1d")
    in_ch, length = shape
    layers: list[nn.Module] = [Reshape(shape)]
    for _ in range(depth):
        stride = 2 if length >= 8 else 1
        make = partial(
            lambda i, s, bias: nn.Conv1d(i, channels, 5, stride=s, padding=2, bias=bias),
            in_ch,
            stride,
        )
        layers.append(norm_act_block(make, in_ch, channels, norm, dims=1))
        in_ch, length = channels, (length - 1) // stride + 1
    layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * length, num_classes)]
    return nn.Sequential(*layers)


# --- cnn2d --------------------------------------------------------------------------------------


@MODELS.register(
    "cnn2d",
    params=(
        Param(
            "channels",
            "int",
            32,
            "channels of the first stage (doubled per stage)",
            low=1,
            high=1024,
        ),
        Param(
            "depth",
            "int",
            3,
            "conv stages (3x3 conv; 2x2 max-pool after each but the last)",
            low=1,
            high=8,
        ),
        _DROPOUT,
    ),
    description="2-D CNN for images (1x8x8 digits, 1x28x28 MNIST, 3x32x32 CIFAR-10).",
    placements=POST_PLACEMENTS,
    fusable=True,
)
def build_cnn2d(
    input_shape: tuple[int, ...],
    num_classes: int,
    norm: NormSpec,
    channels: int = 32,
    depth: int = 3,
    dropout: float = 0.0,
) -> nn.Module:
    """VGG-style CNN; adaptive average pooling makes it work for any image size."""
    shape = _channels_first(input_shape, 2, "cnn2d")
    in_ch, height, width = shape
    layers: list[nn.Module] = [Reshape(shape)]
    out_ch = channels
    for stage in range(depth):
        make = partial(lambda i, o, bias: nn.Conv2d(i, o, 3, padding=1, bias=bias), in_ch, out_ch)
        layers.append(norm_act_block(make, in_ch, out_ch, norm, dims=2))
        if stage < depth - 1 and min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        in_ch, out_ch = out_ch, out_ch * 2
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(in_ch, num_classes),
    ]
    return nn.Sequential(*layers)


# --- resnet -------------------------------------------------------------------------------------


def _conv3(in_ch: int, out_ch: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)


class BasicBlock(nn.Module):
    """Residual block of two 3x3 convs, BN placed by ``norm.placement``.

    before_activation: conv-BN-ReLU-conv-BN (+ shortcut) then ReLU (He et al. 2015).
    after_activation: conv-ReLU-BN-conv-ReLU-BN (+ shortcut).
    none: conv-ReLU-conv (+ shortcut) then ReLU.
    pre_activation: BN-ReLU-conv-BN-ReLU-conv (+ shortcut) (He et al. 2016); the projection
    shortcut takes the pre-activated input.
    The shortcut runs after the residual branch so modules execute in data-flow order.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: NormSpec) -> None:
        super().__init__()
        self.pre = norm.placement is Placement.PRE_ACTIVATION
        bn_after_conv = norm.placement is Placement.BEFORE_ACTIVATION
        if self.pre:
            self.preact = nn.Sequential(batch_norm(in_ch, norm, 2), nn.ReLU())
            first = partial(_conv3, in_ch, out_ch, stride)
            self.branch = nn.Sequential(
                first(False),
                *norm_act_block(partial(_conv3, out_ch, out_ch, 1), out_ch, out_ch, norm, 2),
            )
        else:
            self.branch = nn.Sequential(
                *norm_act_block(partial(_conv3, in_ch, out_ch, stride), in_ch, out_ch, norm, 2),
                *self._second_conv(out_ch, norm),
            )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            if bn_after_conv:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                    batch_norm(out_ch, norm, 2),
                )
            else:
                # after_activation has no activation on the shortcut, hence no BN (BN only
                # follows activations there); pre_activation: every consumer normalizes, so no
                # bias; none: keep it.
                self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=not self.pre)
        self.out_act = nn.ReLU() if (bn_after_conv or not norm.enabled) else nn.Identity()

    @staticmethod
    def _second_conv(ch: int, norm: NormSpec) -> list[nn.Module]:
        placement = norm.placement
        if placement is Placement.BEFORE_ACTIVATION:  # BN, then ReLU after the addition
            return [_conv3(ch, ch, 1, False), batch_norm(ch, norm, 2)]
        if placement is Placement.AFTER_ACTIVATION:
            return list(norm_act_block(partial(_conv3, ch, ch, 1), ch, ch, norm, 2))
        return [_conv3(ch, ch, 1, True)]  # none: ReLU after the addition

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre:
            x = self.preact(x)
            out = self.branch(x)
        else:
            out = self.branch(x)
        result: torch.Tensor = self.out_act(out + self.shortcut(x))
        return result


class ResNet(nn.Module):
    """CIFAR-style ResNet: stem, three stages of ``depth`` blocks (width, 2x, 4x), pool, linear."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        norm: NormSpec,
        depth: int,
        width: int,
    ) -> None:
        super().__init__()
        shape = _channels_first(input_shape, 2, "resnet")
        self.reshape = Reshape(shape)
        pre = norm.placement is Placement.PRE_ACTIVATION
        stem = partial(_conv3, shape[0], width, 1)
        # Pre-activation: the stem conv feeds the first block's BN directly.
        self.stem = stem(False) if pre else norm_act_block(stem, shape[0], width, norm, 2)
        blocks: list[nn.Module] = []
        in_ch = width
        for stage in range(3):
            out_ch = width * 2**stage
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride, norm))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.final = nn.Sequential(batch_norm(in_ch, norm, 2), nn.ReLU()) if pre else nn.Identity()
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.reshape(x))
        logits: torch.Tensor = self.head(self.final(self.blocks(x)))
        return logits


@MODELS.register(
    "resnet",
    params=(
        Param("depth", "int", 1, "residual blocks per stage (3 stages)", low=1, high=18),
        Param(
            "width", "int", 16, "channels of the first stage (doubled per stage)", low=1, high=512
        ),
    ),
    description="Small CIFAR-style ResNet; the only model supporting pre_activation placement.",
    placements=ALL_PLACEMENTS,
    fusable=True,
)
def build_resnet(
    input_shape: tuple[int, ...],
    num_classes: int,
    norm: NormSpec,
    depth: int = 1,
    width: int = 16,
) -> nn.Module:
    """ResNet with ``3 * depth`` basic blocks (depth=3 is ResNet-20)."""
    return ResNet(input_shape, num_classes, norm, depth, width)
