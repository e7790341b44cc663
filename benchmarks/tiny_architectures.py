"""The smallest configurations of the third-party restorers (spandrel architectures) that still exercise each
architecture: one block or group per stage, feature widths 8-16 (where the architecture lets them be that small),
windows of 4. Random weights, seeded: nothing is downloaded.

Each is built directly with its spandrel class; spandrel's loader must then recognise the saved state dict as the
same architecture with the same hyperparameters (its detection reads them from the weights' shapes), which is what
`asvp export x.pth` relies on. Where the code fixes a width (RealCUGAN's UNets, SCUNet's 32-wide attention heads,
DAT's and RGT's position-bias layers at 32) the configuration keeps the smallest it allows.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch

from asvp.exporter.spandrel_loader import import_spandrel


def _issue12() -> dict[str, Callable]:
    import spandrel.architectures as A

    return {
        "SwinIR": lambda: A.SwinIR.SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4,
                                          upscale=2, upsampler="pixelshuffledirect", mlp_ratio=2.0),
        "HAT": lambda: A.HAT.HAT(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                                 compress_ratio=3, squeeze_factor=4, mlp_ratio=2.0),
        # embed_dim 32: at 16 one of DAT's layer norms normalises over zero features in ONNX Runtime
        "DAT": lambda: A.DAT.DAT(img_size=16, embed_dim=32, depth=[2], num_heads=[2], split_size=[2, 4], upscale=2,
                                 expansion_factor=2.0),
        "SCUNet": lambda: A.SCUNet.SCUNet(config=[1, 1, 1, 1, 1, 1, 1], dim=64),  # heads are 32 wide, split in two
        "NAFNet": lambda: A.NAFNet.NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]),
        "ESRGAN": lambda: A.ESRGAN.ESRGAN(num_filters=8, num_blocks=1, scale=2),
        "RealESRGAN Compact": lambda: A.Compact.Compact(num_feat=8, num_conv=2, upscale=2),
        "SPAN": lambda: A.SPAN.SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2),
    }


def _issue27() -> dict[str, Callable]:
    import spandrel.architectures as A
    from spandrel.architectures.KBNet import KBNet_s
    from spandrel.architectures.PLKSR import PLKSR, RealPLKSR
    from spandrel.architectures.RealCUGAN import UpCunet2x

    return {
        "OmniSR": lambda: A.OmniSR.OmniSR(num_feat=16, block_num=1, window_size=4, res_num=1, up_scale=2),
        "SAFMN": lambda: A.SAFMN.SAFMN(dim=8, n_blocks=1, ffn_scale=2.0, upscaling_factor=2),
        "DITN": lambda: A.DITN.DITN(dim=12, ITL_blocks=1, SAL_blocks=1, UFONE_blocks=1, upscale=2),
        "RealCUGAN": lambda: UpCunet2x(),  # its UNets' widths are fixed
        "PLKSR": lambda: PLKSR(dim=16, n_blocks=1, upscaling_factor=2, kernel_size=7),
        "RealPLKSR": lambda: RealPLKSR(dim=16, n_blocks=1, upscaling_factor=2, kernel_size=7),
        "MoSR": lambda: A.MoSR.MoSR(n_block=1, dim=16, upscale=2),
        "KBNet": lambda: KBNet_s(width=16, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]),
        "RCAN": lambda: A.RCAN.RCAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4),
        "RetinexFormer": lambda: A.RetinexFormer.RetinexFormer(n_feat=8, stage=1, num_blocks=[1, 1, 1]),
        # depth 2: spandrel reads RGT's c_ratio from a second block; embed_dim 32: at 16 a position-bias layer norm
        # normalises over zero features
        "RGT": lambda: A.RGT.RGT(embed_dim=32, depth=[2], num_heads=[2], mlp_ratio=2.0, upscale=2, split_size=[4, 4]),
        "DRCT": lambda: A.DRCT.DRCT(img_size=16, embed_dim=16, depths=(6,), num_heads=(2,), window_size=4, upscale=2,
                                    upsampler="pixelshuffle", gc=8),
        "Swin2SR": lambda: A.Swin2SR.Swin2SR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4,
                                             upscale=2, upsampler="pixelshuffledirect", mlp_ratio=2.0),
        "FFTformer": lambda: A.FFTformer.FFTformer(dim=8, num_blocks=[1, 1, 1], num_refinement_blocks=1),
    }


# The export options each architecture needs today, as `asvp export` asks for them. The windowed transformers
# (SwinIR, HAT, DAT, DRCT, Swin2SR, RGT) keep a dynamic batch through their export patches (exporter/patches.py);
# FFTformer turns the batch into a Python int where no patch applies. The harness checks that TorchScript still
# needs them (a cheap attempt without them) and exports with them; dynamo's need is taken from here.
FLAGS = {"FFTformer": ("--static-batch",)}
# Architectures that do not pass today, and the issue item whose fix they wait for.
BLOCKED: dict[str, str] = {}
# Architectures that pass but cost CI too much (its 20-minute budget on 2 cores): `python -m benchmarks.architectures`
# (the doc's run) checks them; the CI table test leaves them out.
COSTLY = {"FFTformer": "about 90 s on 2 cores (dynamo export, 172 candidates)"}


# Every architecture of the table, in its order: issue 12's set, then issue 27's (the builders above, same names).
ISSUE12 = ("SwinIR", "HAT", "DAT", "SCUNet", "NAFNet", "ESRGAN", "RealESRGAN Compact", "SPAN")
ISSUE27 = ("OmniSR", "SAFMN", "DITN", "RealCUGAN", "PLKSR", "RealPLKSR", "MoSR", "KBNet", "RCAN", "RetinexFormer",
           "RGT", "DRCT", "Swin2SR", "FFTformer")
NAMES = ISSUE12 + ISSUE27


def names() -> list[str]:
    return list(NAMES)


def issue(name: str) -> int:
    """The issue whose pass first covered `name` (12 or 27)."""
    return 12 if name in ISSUE12 else 27


def build(name: str) -> torch.nn.Module:
    """`name`'s tiny configuration, random weights from seed 0, in eval mode."""
    import_spandrel()
    table = {**_issue12(), **_issue27()}
    assert tuple(table) == NAMES, "NAMES lists the builders, in order"
    if name not in table:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(table)}")
    torch.manual_seed(0)
    with warnings.catch_warnings():  # architectures' own deprecation chatter (torch.meshgrid, ...)
        warnings.simplefilter("ignore")
        return table[name]().eval()
