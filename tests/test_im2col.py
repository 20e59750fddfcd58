"""targets.kernels.im2col against a NumPy im2col: every layout, padding and stride the lowering uses."""
import numpy as np
import pytest
import tvm

import targets
from targets.kernels.depthwise import output_size
from targets.kernels.im2col import im2col

TARGET = targets.get("x86-host").tvm_target()


def reference(x_nchw, KH, KW, stride, padding):
    """rows (b, i, j), columns (kh, kw, c), zero padding."""
    B, C, H, W = x_nchw.shape
    pt, pl, pb, pr = padding
    xp = np.pad(x_nchw, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    OH, OW = output_size(H, W, KH, KW, stride, padding)
    cols = np.empty((B, OH, OW, KH, KW, C), x_nchw.dtype)
    for kh in range(KH):
        for kw in range(KW):
            patch = xp[:, :, kh:kh + stride[0] * OH:stride[0], kw:kw + stride[1] * OW:stride[1]]
            cols[:, :, :, kh, kw, :] = patch.transpose(0, 2, 3, 1)
    return cols.reshape(B * OH * OW, KH * KW * C)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("B,C,H,W,K,stride,padding", [
    (1, 3, 225, 225, 3, (2, 2), (0, 0, 0, 0)),     # EfficientNet-Lite0's stem (padded by the graph)
    (2, 3, 17, 19, 3, (2, 2), (1, 1, 1, 1)),       # padding in the kernel, odd sizes, a batch
    (1, 32, 8, 8, 3, (1, 1), (1, 1, 1, 1)),        # a 3x3 conv on 32 channels (vectorized in NHWC)
    (1, 20, 9, 7, 5, (1, 2), (2, 1, 2, 3)),        # asymmetric padding and strides
])
def test_im2col_matches_numpy(layout, B, C, H, W, K, stride, padding):
    x = np.random.default_rng(0).integers(0, 256, (B, C, H, W)).astype(np.uint8)
    want = reference(x, K, K, stride, padding)
    src = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    f = tvm.compile(tvm.IRModule({"main": im2col(B, C, H, W, K, K, stride, padding, "uint8", layout)}),
                    target=TARGET).jit()
    out = tvm.runtime.tensor(np.zeros(want.shape, np.uint8))
    f["main"](tvm.runtime.tensor(src), out)
    assert np.array_equal(out.numpy(), want)
