"""Edge-model blocks (issue 27), tiny and random-weight: MobileNetV3, YOLO neck, U-Net decoder,
ConvNeXt, pre-activation residual block, reflect padding. Shared by test_edge_blocks.py (API)
and test_edge_cli.py (the CLI from .pt2 and ONNX files)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MobileNetV3Block(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.expand, self.dw = nn.Conv2d(3, c, 1), nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.se1, self.se2, self.project = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1), nn.Conv2d(c, 4, 1)

    def forward(self, x):
        y = F.hardswish(self.dw(F.hardswish(self.expand(x))))
        gate = F.hardsigmoid(self.se2(F.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        return self.project(y * gate)


class YoloNeck(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(4 * c, c, 1)
        self.down, self.out = nn.Conv2d(2 * c, c, 3, stride=2, padding=1), nn.Conv2d(2 * c, 4, 1)

    def forward(self, x):
        x = F.silu(self.a(x))
        p1 = F.max_pool2d(x, 5, 1, 2)
        p2 = F.max_pool2d(p1, 5, 1, 2)
        p3 = F.max_pool2d(p2, 5, 1, 2)
        y = F.leaky_relu(self.b(torch.cat([x, p1, p2, p3], 1)), 0.1)
        d = F.silu(self.down(torch.cat([x, y], 1)))
        return self.out(torch.cat([F.interpolate(d, scale_factor=2.0, mode="nearest"), y], 1))


class PreActBlock(nn.Module):
    """BN -> ReLU -> conv, twice, identity shortcut: the batch norms follow no conv."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(c), nn.BatchNorm2d(c)
        self.c1, self.c2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)

    def forward(self, x):
        x = self.stem(x)
        y = self.c2(F.relu(self.bn2(self.c1(F.relu(self.bn1(x))))))
        return F.avg_pool2d(x + y, 3, 2, 1)


class ReflectPad(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, c, 3), nn.Conv2d(c, 4, 3)

    def forward(self, x):
        y = F.elu(self.a(F.pad(x, (1, 1, 1, 1), mode="reflect")))
        return self.b(F.pad(y, (1, 1, 1, 1), mode="replicate"))


class ConvNeXtBlock(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.stem, self.dw = nn.Conv2d(3, c, 1), nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.ln, self.pw1, self.pw2 = nn.LayerNorm(c), nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        x = self.stem(x)
        y = self.pw2(F.gelu(self.pw1(self.ln(self.dw(x).permute(0, 2, 3, 1)))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class UNetDecoder(nn.Module):
    """Two transposed convs (k2 s2; k3 s2 p1 output_padding 1), bilinear upsampling (scale 2
    half-pixel; to 32x32 with align_corners), skip concat, PReLU."""

    def __init__(self, c=8):
        super().__init__()
        self.enc1, self.enc2 = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.up2 = nn.ConvTranspose2d(2 * c, c, 3, stride=2, padding=1, output_padding=1)
        self.dec, self.act = nn.Conv2d(2 * c, c, 3, padding=1), nn.PReLU(c)
        self.side, self.head = nn.Conv2d(2 * c, c, 1), nn.Conv2d(c, 2, 1)
        with torch.no_grad():
            self.act.weight.uniform_(-0.3, 0.5)

    def forward(self, x):
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.enc2(e1))
        d = self.act(self.dec(torch.cat([F.relu(self.up(e2)), e1], 1)))
        d = d + F.interpolate(self.side(e2), scale_factor=2.0, mode="bilinear", align_corners=False) + self.up2(e2)
        return self.head(F.interpolate(d, size=(24, 24), mode="bilinear", align_corners=True))


# (block, float islands the plan may declare with lookup tables on)
BLOCKS = {"unet_decoder": (UNetDecoder, set()), "mobilenetv3": (MobileNetV3Block, set()), "yolo_neck": (YoloNeck, set()),
          "preact": (PreActBlock, set()), "reflect_pad": (ReflectPad, set()),
          "convnext": (ConvNeXtBlock, {"layer_norm"})}


