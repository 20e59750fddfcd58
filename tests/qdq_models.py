"""Small user models made the way users make QDQ files: a CNN trained for a few steps on the
digits calibration split, exported to ONNX, then quantized by ONNX Runtime's ``quantize_static``
(with a calibration data reader) or by PyTorch's PT2E flow (torchao) and the ONNX exporter.

Shared by tests/test_qdq_cli.py; nothing here is a fixture so it can also be run by hand.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

import tvmptq


class SmallCNN(nn.Module):
    """Six conv/linear layers: stem, 3x3, strided 3x3, 1x1, residual add, global mean, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(16, 16, 1)
        self.c4 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.c1(x) + x)
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c4(torch.relu(self.c3(x))))
        return self.fc(x.mean((2, 3)))


def digits():
    s = tvmptq.get_set("digits")
    return np.asarray(s.calibration()[0], np.float32), np.asarray(s.evaluation()[0], np.float32)


def trained_cnn(steps: int = 150, seed: int = 0) -> nn.Module:
    """SmallCNN fitted to the labels of the digits calibration split (a few seconds on 2 cores):
    structured weights and a confident classifier, unlike random weights."""
    from sklearn.datasets import load_digits
    torch.manual_seed(seed)
    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32)[:, None])
    y = torch.from_numpy(d.target.astype(np.int64))
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def float_onnx(model: nn.Module, path: Path, opset: int | None = None) -> Path:
    from tvmptq.peers import export_onnx
    path = export_onnx(model, (torch.zeros(1, 1, 8, 8),), path, ["input"])
    if opset is not None:
        m = onnx.version_converter.convert_version(onnx.load(str(path)), opset)
        onnx.save(m, str(path))
    return path


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a (N, 1, 8, 8) array, one sample a batch
    (the exported float model has a static batch of 1)."""

    def __init__(self, x):
        self.batches = iter([{"input": x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.batches, None)


def ort_qdq(fp32: Path, out: Path, calib, activation="uint8", weight="int8", per_channel=True,
            extra=None) -> Path:
    """``quantize_static`` in QDQ format: activations uint8 or int8, weights int8 or int4."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8, "int4": QuantType.QInt4, "uint4": QuantType.QUInt4}
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(calib)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(fp32), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=types[activation], weight_type=types[weight],
                        extra_options={"ActivationSymmetric": activation == "int8", **(extra or {})})
    return out


def pt2e_qdq(model: nn.Module, out: Path, calib) -> Path:
    """PT2E (torchao's X86InductorQuantizer) -> convert_pt2e -> torch.onnx.export (dynamo)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    x = torch.from_numpy(calib[:8])
    batch = {0: torch.export.Dim("batch", min=1)}
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(torch.export.export(model, (x,), dynamic_shapes=(batch,)).module(), quantizer)
        for i in range(0, len(calib), 64):
            prepared(torch.from_numpy(calib[i:i + 64]))
        converted = convert_pt2e(prepared)
        torch.onnx.export(converted, (x,), str(out), dynamo=True, input_names=["input"], dynamic_shapes=(batch,),
                          verbose=False)
    return out
