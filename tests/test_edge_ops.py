"""Issue 27's new integer ops, op by op (tvmptq/quant/edge_ops.py): transposed convolution as zero
insertion + conv2d (every geometry of kernel, stride, padding, output_padding, dilation, groups),
bilinear upsampling on integer weights (half-pixel and align_corners sampling, refused off the
grid), PReLU with two multipliers, ONNX Resize; simulation == NumPy reference, compiled for
x86-host == reference, and refusals that name the node."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relay_passes as rp
import tvmptq
from targets.build import compile_integer
from tvmptq.errors import UnsupportedOpError
from tvmptq.quant.edge_ops import axis_weights, conv_transpose_as_conv
from tvmptq.quant.capture import export_model
from tvmptq.reference.executor import run_plan

# (in channels, out channels, kernel, stride, padding, output_padding, dilation, groups)
GEOMETRIES = [(4, 6, 2, 2, 0, 0, 1, 1), (4, 6, 3, 2, 1, 1, 1, 1), (4, 4, 3, 1, 1, 0, 1, 1), (4, 6, 4, 2, 1, 0, 1, 2),
              (4, 6, 3, 2, 0, 0, 2, 1), (4, 6, 1, 2, 1, 1, 1, 1), (4, 4, 3, 3, 2, 2, 1, 4)]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_conv_transpose_rewrite_is_the_same_function(geometry):
    cin, cout, k, s, p, op, d, g = geometry
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(cin, cout, k, s, p, op, g, dilation=d).eval()
    x = torch.randn(2, cin, 5, 6)
    gm = export_model(layer, (x,))
    assert conv_transpose_as_conv(gm) == 1
    assert not any(n.target == torch.ops.aten.conv_transpose2d.input for n in gm.graph.nodes)
    torch.testing.assert_close(gm(x), layer(x), rtol=1e-5, atol=1e-5)


class Decoder(nn.Module):
    """Every geometry above, one after another, with PReLUs (scalar and per channel, negative
    slopes) and bilinear upsampling at several scales."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(cin, cout, k, s, p, op, g, dilation=d)
                                 for cin, cout, k, s, p, op, d, g in GEOMETRIES)
        self.back = nn.ModuleList(nn.Conv2d(cout, 4, 3, padding=1) for _, cout, *_ in GEOMETRIES)
        self.act1, self.act2 = nn.PReLU(4), nn.PReLU()
        with torch.no_grad():
            self.act1.weight.copy_(torch.tensor([-0.5, 0.0, 0.25, 1.5]))
            self.act2.weight.fill_(-0.2)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        y = self.act1(self.stem(x))
        outs = []
        for up, back in zip(self.ups, self.back):
            z = back(up(y))
            outs.append(F.adaptive_avg_pool2d(z, 1))
        for z in outs:
            y = y + z
        y = self.act2(y)
        y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)   # 1/4 weights
        y = F.interpolate(y, scale_factor=1.5, mode="bilinear", align_corners=False)   # 1/6 grid
        y = F.interpolate(y, size=(13, 11), mode="bilinear", align_corners=True)       # 12->13, 12->11
        return self.head(y)


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    module = Decoder().eval()
    model = tvmptq.zoo.from_module(module, (torch.randn(1, 3, 4, 4),))
    x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32)
    qm = tvmptq.quantize(model, (x,), tvmptq.make_config(8, 8), progress=False)
    return module, model, qm, x


def test_plan_simulation_reference_and_accuracy(decoder):
    module, _, qm, x = decoder
    kinds = [lp.kind for lp in qm.plan.layers]
    assert kinds.count("bilinear") == 3 and kinds.count("prelu") == 2 and qm.plan.float_islands == []
    assert [lp.attrs["denominators"] for lp in qm.plan.layers if lp.kind == "bilinear"] == [[4, 4], [6, 6], [12, 10]]
    ref = run_plan(qm.plan, x)
    np.testing.assert_array_equal(qm.runner()(x), ref)
    fp = module(torch.as_tensor(x)).detach().numpy().ravel()
    assert fp @ ref.ravel() / np.linalg.norm(fp) / np.linalg.norm(ref) >= 0.999


def test_compiled_bit_exact_and_transposed_convs_in_dot_kernels(decoder):
    _, model, qm, x = decoder
    mod = rp.lower(model.build(), model.example_inputs(4), qm.plan)
    assert rp.float_ops(mod) == []
    got = compile_integer(mod, "x86-host", tensorize=True)(x)
    np.testing.assert_array_equal(got, run_plan(qm.plan, x))
    report = rp.tensorize_for("x86-host", qm.plan)(mod)
    lines = {line.split(":")[0]: line for line in rp.tensorize_report(report)}
    import targets
    if "vnni" in targets.get("x86-host").caps():  # the rewritten convs (groups 1) run in im2col + dense
        for name in ("conv_transpose2d_as_conv", "conv_transpose2d_1_as_conv", "conv_transpose2d_2_as_conv"):
            assert any(name in k and ": tensorized (" in v for k, v in lines.items()), lines


@pytest.mark.parametrize("n_in,n_out,align,scale", [(8, 16, False, 2.0), (8, 24, False, 3.0), (6, 9, False, None),
                                                    (8, 16, True, None), (5, 13, True, None), (12, 8, False, None)])
def test_axis_weights_interpolate_like_pytorch(n_in, n_out, align, scale):
    index, weight, d = axis_weights(n_in, n_out, align, scale)
    assert (weight.sum(1) == d).all() and (weight >= 0).all()
    x = torch.randn(1, 1, 1, n_in, dtype=torch.float64)
    kw = {"scale_factor": (1.0, scale)} if scale else {"size": (1, n_out)}
    want = F.interpolate(x, mode="bilinear", align_corners=align, **kw).numpy().ravel()
    xs = x.numpy().ravel()
    got = (xs[index[:, 0]] * weight[:, 0] + xs[index[:, 1]] * weight[:, 1]) / d
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_off_grid_bilinear_scale_refused_by_name():
    class Odd(nn.Module):
        def forward(self, x):
            return F.interpolate(nn.functional.relu(x), scale_factor=1.37, mode="bilinear")

    with pytest.raises(UnsupportedOpError, match=r"upsample_bilinear2d 'upsample_bilinear2d'.*multiples of 1/.*at most 1/64"):
        tvmptq.prepare(tvmptq.zoo.from_module(Odd(), (torch.randn(1, 3, 8, 8),)))


def test_reference_refuses_wrong_bilinear_weights(decoder):
    _, _, qm, x = decoder
    lp = next(lp for lp in qm.plan.layers if lp.kind == "bilinear")
    lp.arrays["rows_weight"] = lp.arrays["rows_weight"][:, ::-1].copy()
    try:
        with pytest.raises(ValueError, match=f"layer '{lp.name}': rows weights of output 0"):
            run_plan(qm.plan, x)
    finally:
        lp.arrays["rows_weight"] = lp.arrays["rows_weight"][:, ::-1].copy()


def test_unlowerable_ops_name_node_and_what_is_needed():
    class Bicubic(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2.0, mode="bicubic")

    with pytest.raises(UnsupportedOpError, match="upsample_bicubic2d.*at node 'upsample_bicubic2d'.*4x4 integer weights"):
        tvmptq.prepare(tvmptq.zoo.from_module(Bicubic(), (torch.randn(1, 3, 8, 8),)))


def test_onnx_resize_modes(tmp_path):
    """Nearest and linear Resize with constant scales, or sizes computed from another tensor's shape
    (folded to constants at load), convert (simulation == reference); a cubic Resize is refused
    naming the node."""
    class Up(nn.Module):
        def __init__(self, mode):
            super().__init__()
            self.c, self.mode = nn.Conv2d(3, 4, 1), mode

        def forward(self, x):
            y = self.c(x)
            if self.mode == "bicubic":
                return F.interpolate(y, scale_factor=2.0, mode="bicubic")
            u = F.interpolate(y, scale_factor=2.0, mode="nearest")
            return u + F.interpolate(y, size=u.shape[-2:], mode="bilinear")  # sizes from Shape -> Slice -> Concat

    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    for mode in ("mixed", "bicubic"):
        path = tmp_path / f"{mode}.onnx"
        torch.onnx.export(Up(mode).eval(), (torch.as_tensor(x[:1]),), str(path), opset_version=17, dynamo=False)
        if mode == "bicubic":
            with pytest.raises(UnsupportedOpError, match=r"operator Resize at node .*mode='cubic'"):
                tvmptq.load(str(path))
            continue
        qm = tvmptq.quantize(tvmptq.load(str(path)), (x,), tvmptq.make_config(8, 8), progress=False)
        assert [lp.kind for lp in qm.plan.layers] == ["conv2d", "bilinear", "add"]
        np.testing.assert_array_equal(qm.runner()(x), run_plan(qm.plan, x))


class InputAndIsland(nn.Module):
    """Bilinear on the model input (a segmenter resizing its image), PReLU, then bilinear on a
    float-island result (LayerNorm): both quantized at the layer's input, like a conv's."""

    def __init__(self):
        super().__init__()
        self.c, self.p, self.ln = nn.Conv2d(3, 4, 3, padding=1), nn.PReLU(), nn.LayerNorm(16)

    def forward(self, x):
        y = self.p(self.c(F.interpolate(x, scale_factor=2.0, mode="bilinear")))
        return F.interpolate(self.ln(y), scale_factor=2.0, mode="bilinear", align_corners=True)


def test_bilinear_on_model_input_and_island_result():
    torch.manual_seed(0)
    model = tvmptq.zoo.from_module(InputAndIsland().eval(), (torch.randn(1, 3, 8, 8),))
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    qm = tvmptq.quantize(model, (x,), tvmptq.make_config(8, 8), progress=False)
    assert [lp.kind for lp in qm.plan.layers] == ["bilinear", "conv2d", "prelu", "bilinear"]
    assert qm.plan.float_islands == ["layer_norm"]
    ref = run_plan(qm.plan, x)
    np.testing.assert_array_equal(qm.runner()(x), ref)
    mod = rp.lower(model.build(), model.example_inputs(4), qm.plan)
    np.testing.assert_array_equal(compile_integer(mod, "x86-host", tensorize=True)(x), ref)
