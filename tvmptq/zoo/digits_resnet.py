"""A ResNet-8-like CNN for the 8x8 scikit-learn digits, trained here by scripts/train_digits.py.

The weights ship in tvmptq/zoo/weights/digits_resnet.pt (a state_dict) with a JSON sidecar that
records the test accuracy they reach on the protocol's split (EVAL_PROTOCOL.md, "Digits").
Written for quantization: explicit nn.ReLU modules, `relu(out + identity)` residual adds, no
in-place ops.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tvmptq.errors import ModelError
from tvmptq.zoo.entry import ZooModel

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "digits_resnet.pt"
SIDECAR_FILE = WEIGHTS_DIR / "digits_resnet.json"
NUM_CLASSES = 10


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN with a residual connection; a 1x1 conv+BN projects the identity when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(in_channels, out_channels, 3, stride)
        self.relu1 = nn.ReLU()
        self.conv2 = conv_bn(out_channels, out_channels, 3)
        self.relu2 = nn.ReLU()
        needs_projection = stride != 1 or in_channels != out_channels
        self.downsample = conv_bn(in_channels, out_channels, 1, stride) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.downsample(x)
        out = self.conv2(self.relu1(self.conv1(x)))
        return self.relu2(out + identity)


class DigitsResNet(nn.Module):
    """(N,1,8,8) pixels/16 -> (N,10) logits. Feature maps 8x8x16 -> 8x8x16 -> 4x4x32 -> 2x2x64."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(1, 16, 3)
        self.stem_relu = nn.ReLU()
        self.block1 = BasicBlock(16, 16)
        self.block2 = BasicBlock(16, 32, stride=2)
        self.block3 = BasicBlock(32, 64, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_relu(self.stem(x))
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(self.flatten(self.pool(x)))


def build_digits_resnet() -> nn.Module:
    if not WEIGHTS_FILE.is_file():
        raise ModelError(f"digits_resnet weights missing at {WEIGHTS_FILE}; run scripts/train_digits.py")
    model = DigitsResNet()
    model.load_state_dict(torch.load(WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return model.float().eval()


def recorded_training() -> dict:
    """The sidecar written with the weights: test accuracy, epochs, seed, torch version, train seconds."""
    return json.loads(SIDECAR_FILE.read_text())


@torch.no_grad()
def count_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> int:
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return correct


def example_digits(batch: int) -> tuple[torch.Tensor]:
    # Uniform in [0, 1), the range of pixels/16; seeded so every call gives the same tensor.
    return (torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(0)),)


DIGITS_RESNET = (
    ZooModel(
        name="digits_resnet",
        task="classification",
        build=build_digits_resnet,
        example_inputs=example_digits,
        input_names=("input",),
        description="ResNet-8-like CNN trained on scikit-learn digits (10 classes), input (N,1,8,8) = pixels/16",
    )
)
