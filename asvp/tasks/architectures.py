"""Small teacher architectures, one typical of each restoration task, sized to train on 2 CPU cores.

All take and return NCHW float images in [0, 1] (outputs are not clamped: metrics clip). Every
architecture is fully convolutional, so exported models have dynamic batch, height and width
(U-Net and the dehazer need H and W divisible by 4).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv(cin: int, cout: int, k: int = 3, dilation: int = 1, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation)


class ResBlock(nn.Module):
    def __init__(self, ch: int, dilation: int = 1):
        super().__init__()
        self.conv1 = conv(ch, ch, dilation=dilation)
        self.conv2 = conv(ch, ch, dilation=dilation)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class EDSRLite(nn.Module):
    """EDSR-style super-resolution: residual body (no batch-norm) and a pixel-shuffle tail.

    A bicubic skip carries the low frequencies, so the body learns only the missing detail.
    """

    def __init__(self, scale: int = 2, ch: int = 32, blocks: int = 4):
        super().__init__()
        self.scale = scale
        self.head = conv(3, ch)
        self.body = nn.Sequential(*[ResBlock(ch) for _ in range(blocks)])
        self.body_tail = conv(ch, ch)
        self.upsample = nn.Sequential(conv(ch, 3 * scale * scale), nn.PixelShuffle(scale))

    def forward(self, x):
        base = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        f = self.head(x)
        f = f + self.body_tail(self.body(f))
        return base + self.upsample(f)


class UNetLite(nn.Module):
    """Two-level U-Net with a global residual, the usual shape of low-light / underwater enhancers."""

    def __init__(self, ch: int = 24):
        super().__init__()
        self.enc1 = nn.Sequential(conv(3, ch), nn.ReLU(), conv(ch, ch), nn.ReLU())
        self.down1 = conv(ch, 2 * ch, stride=2)
        self.enc2 = nn.Sequential(nn.ReLU(), conv(2 * ch, 2 * ch), nn.ReLU())
        self.down2 = conv(2 * ch, 4 * ch, stride=2)
        self.mid = nn.Sequential(nn.ReLU(), conv(4 * ch, 4 * ch), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(4 * ch, 2 * ch, 2, stride=2)
        self.dec2 = nn.Sequential(conv(4 * ch, 2 * ch), nn.ReLU())
        self.up1 = nn.ConvTranspose2d(2 * ch, ch, 2, stride=2)
        self.dec1 = nn.Sequential(conv(2 * ch, ch), nn.ReLU())
        self.out = conv(ch, 3)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.down1(e1))
        m = self.mid(self.down2(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return x + self.out(d1)


class ResidualCNN(nn.Module):
    """Plain residual CNN (UWCNN-like): a stack of 3x3 conv blocks predicting a correction."""

    def __init__(self, ch: int = 32, blocks: int = 3):
        super().__init__()
        self.head = conv(3, ch)
        self.body = nn.Sequential(*[ResBlock(ch) for _ in range(blocks)])
        self.tail = conv(ch, 3)

    def forward(self, x):
        return x + self.tail(F.relu(self.body(self.head(x))))


class AODNetWide(nn.Module):
    """AOD-Net's K-estimation dehazer, J = K * I - K + b, with wider feature maps than the original's 3."""

    def __init__(self, ch: int = 16):
        super().__init__()
        self.c1 = conv(3, ch, 1)
        self.c2 = conv(ch, ch, 3)
        self.c3 = conv(2 * ch, ch, 5)
        self.c4 = conv(2 * ch, ch, 7)
        self.c5 = conv(4 * ch, 3, 3)
        self.b = nn.Parameter(torch.ones(1))

    def forward(self, x):
        x1 = F.relu(self.c1(x))
        x2 = F.relu(self.c2(x1))
        x3 = F.relu(self.c3(torch.cat([x1, x2], 1)))
        x4 = F.relu(self.c4(torch.cat([x2, x3], 1)))
        k = F.relu(self.c5(torch.cat([x1, x2, x3, x4], 1)))
        return k * x - k + self.b


class DilatedDerainNet(nn.Module):
    """Residual rain-streak estimator with growing dilations (wide context for long streaks): J = I - R."""

    def __init__(self, ch: int = 32, dilations=(1, 2, 4, 2, 1)):
        super().__init__()
        self.head = conv(3, ch)
        self.body = nn.Sequential(*[ResBlock(ch, d) for d in dilations])
        self.tail = conv(ch, 3)

    def forward(self, x):
        return x - self.tail(F.relu(self.body(F.relu(self.head(x)))))


ARCHITECTURES = {
    "EDSRLite": EDSRLite,
    "UNetLite": UNetLite,
    "ResidualCNN": ResidualCNN,
    "AODNetWide": AODNetWide,
    "DilatedDerainNet": DilatedDerainNet,
}
