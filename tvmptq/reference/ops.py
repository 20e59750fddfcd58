"""NumPy building blocks of the reference executor: exact integer kernels and an ATen op table.

Integer kernels (:func:`int_matmul`, :func:`conv2d`, :func:`requantize`) are exact. Products of
integers are summed in int64 or, when a bound (max|x| * max_c sum|w_c|) proves every partial sum
is an integer below 2^24 (2^53), with float32 (float64) BLAS: all three give the same integers,
whatever the summation order, and BLAS is ~30x faster than NumPy's int64 matmul. Set
``INT64_ONLY = True`` to force the int64 path.

``OPS`` maps an ATen op name (as the program records it, e.g. ``"softmax.int"``) to a NumPy
function with ATen's argument order and defaults. Float ops return float32 like PyTorch does;
transcendental functions and reductions are evaluated in float64 and rounded once to float32.
``INTEGER_OPS`` is the data movement allowed on integer tensors: the same functions, except that
padding fills with the tensor's zero point (the real value 0) and max pooling never picks padding.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

INT64_ONLY = False
F32_EXACT = 2.0 ** 24
F64_EXACT = 2.0 ** 53
INT64_MAX = 2 ** 63 - 1


# --- exact integer kernels --------------------------------------------------------------------
def _exact_dtype(bound: float) -> np.dtype:
    """Narrowest type whose arithmetic is exact for integer sums bounded by ``bound``."""
    if INT64_ONLY or bound >= F64_EXACT:
        return np.dtype(np.int64)
    return np.dtype(np.float32 if bound < F32_EXACT else np.float64)


def absmax(x: np.ndarray) -> float:
    return float(max(x.max(initial=0), -x.min(initial=0))) if x.size else 0.0


def int_matmul(a: np.ndarray, b: np.ndarray, bound: float) -> np.ndarray:
    """a @ b of integer arrays, exactly, as int64; ``bound`` >= the largest |partial sum|."""
    dt = _exact_dtype(bound)
    return np.matmul(a.astype(dt), b.astype(dt)).astype(np.int64)


def _weight_l1(w: np.ndarray) -> float:
    """max over output channels of sum |w| (w: (O, K))."""
    return float(np.abs(w.astype(np.int64)).sum(axis=1).max(initial=0))


def linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x (..., K) @ w(O, K)^T with exact integer accumulation, int64 result."""
    flat = int_matmul(x.reshape(-1, x.shape[-1]), w.T, absmax(x) * _weight_l1(w))  # 2-D: one GEMM
    return flat.reshape(x.shape[:-1] + (w.shape[0],))


def _zero_pad(x: np.ndarray, ph: int, pw: int, fill=0) -> np.ndarray:
    if not (ph or pw):
        return x
    n, c, h, w = x.shape
    out = np.full((n, c, h + 2 * ph, w + 2 * pw), fill, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def conv2d(x: np.ndarray, w: np.ndarray, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
           groups: int = 1) -> np.ndarray:
    """NCHW / OIHW convolution with zero padding and groups. Integer inputs give the exact int64
    accumulator; float inputs are computed in float64."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    w2 = w.reshape(groups, og, cg * kh * kw)                              # K ordered (c, i, j)
    if x.dtype.kind == "f":
        dt = np.dtype(np.float64)
    else:
        dt = _exact_dtype(absmax(x) * _weight_l1(w.reshape(o, -1)))
    xp = _zero_pad(x.astype(dt), ph, pw)
    taps = [xp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
            for i in range(kh) for j in range(kw)]
    if groups == c and cg == 1:  # depthwise (channel multiplier o // c): elementwise products
        wt = w.reshape(o, kh * kw).astype(dt)
        src = None if o == c else np.arange(o) // (o // c)
        acc = np.zeros((n, o, ho, wo), dtype=dt)
        for t, patch in enumerate(taps):
            acc += (patch if src is None else patch[:, src]) * wt[None, :, t, None, None]
    else:  # one GEMM per group: (og, K) @ (K, n * ho * wo)
        cols = np.stack(taps, axis=2).reshape(n, groups, cg * kh * kw, ho * wo)
        acc = np.empty((n, groups, og, ho * wo), dtype=dt)
        for g in range(groups):
            xg = cols[:, g].transpose(1, 0, 2).reshape(cg * kh * kw, n * ho * wo)
            acc[:, g] = (w2[g].astype(dt) @ xg).reshape(og, n, ho * wo).transpose(1, 0, 2)
        acc = acc.reshape(n, o, ho, wo)
    return acc if x.dtype.kind == "f" else acc.astype(np.int64)


def requantize(acc: np.ndarray, m, k) -> np.ndarray:
    """(acc * m + 2^(k-1)) >> k in int64 (arithmetic shift); m, k broadcast against acc."""
    acc, m, k = np.asarray(acc, np.int64), np.asarray(m, np.int64), np.asarray(k, np.int64)
    if float(absmax(acc)) * float(absmax(m)) + 2.0 ** (int(k.max()) - 1) >= INT64_MAX:
        raise OverflowError("requantize overflows int64: |acc * m| >= 2^63")
    return (acc * m + (np.int64(1) << (k - 1))) >> k


# --- dtype rules (ATen type promotion, the common cases) -----------------------------------------
def _result_dtype(*xs) -> np.dtype | None:
    arrays = [x for x in xs if isinstance(x, np.ndarray)]
    floats = [x.dtype for x in arrays if x.dtype.kind == "f"]
    if floats:
        return np.result_type(*floats)
    if any(isinstance(x, float) for x in xs):
        return np.dtype(np.float32)  # int tensor op Python float -> default dtype
    return np.result_type(*[x.dtype for x in arrays]) if arrays else None


def _binary(fn, *, true_div=False):
    def op(a, b, alpha=1, **kw):
        dt = _result_dtype(a, b)
        if true_div and (dt is None or dt.kind != "f"):
            dt = np.dtype(np.float32)
        a, b = (x.astype(dt, copy=False) if isinstance(x, np.ndarray) else x for x in (a, b))
        if alpha != 1:
            b = b * alpha
        out = fn(a, b, **kw)
        return out.astype(dt, copy=False) if dt is not None and isinstance(out, np.ndarray) else out
    return op


def _div(a, b, rounding_mode=None):
    if rounding_mode is None:
        return np.true_divide(a, b)
    return np.floor_divide(a, b) if rounding_mode == "floor" else np.trunc(np.true_divide(a, b))


def _f64(fn):
    """An elementwise/reducing float op computed in float64, returned in the input's float dtype."""
    def op(x, *args, **kw):
        dt = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
        return np.asarray(fn(x.astype(np.float64), *args, **kw)).astype(dt)
    return op


def _dims(dim, ndim):
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return tuple(range(ndim))
    return tuple(d % ndim for d in (dim if isinstance(dim, (list, tuple)) else [dim]))


# --- float math -------------------------------------------------------------------------------
def softmax(x, dim, half_to_float=False, dtype=None):
    e = np.exp(x - x.max(axis=dim, keepdims=True))
    return e / e.sum(axis=dim, keepdims=True)


def log_softmax(x, dim, half_to_float=False, dtype=None):
    shifted = x - x.max(axis=dim, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=dim, keepdims=True))


def layer_norm(x, shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    if weight is not None:
        y = y * weight.astype(np.float64)
    return y if bias is None else y + bias.astype(np.float64)


def gelu(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def vector_norm(x, ord=2, dim=None, keepdim=False, dtype=None):
    axes = _dims(dim, x.ndim)
    if ord == float("inf"):
        return np.abs(x).max(axis=axes, keepdims=keepdim)
    return (np.abs(x) ** ord).sum(axis=axes, keepdims=keepdim) ** (1.0 / ord)


def _reduce(fn, default_int=np.int64):
    def op(x, dim=None, keepdim=False, dtype=None):
        if dtype is not None:
            x = x.astype(dtype)
        out_dt = x.dtype if x.dtype.kind == "f" else np.dtype(default_int)
        acc = x.astype(np.float64) if x.dtype.kind == "f" else x.astype(np.int64)
        return np.asarray(fn(acc, axis=_dims(dim, x.ndim), keepdims=keepdim)).astype(out_dt)
    return op


def max_dim(x, dim, keepdim=False):
    idx = np.expand_dims(x.argmax(axis=dim), dim)
    vals = np.take_along_axis(x, idx, axis=dim)
    return (vals, idx) if keepdim else (vals.squeeze(dim), idx.squeeze(dim))


def clamp(x, min=None, max=None):
    if min is not None:
        x = np.maximum(x, np.asarray(min, dtype=x.dtype))
    if max is not None:
        x = np.minimum(x, np.asarray(max, dtype=x.dtype))
    return x


def hardswish(x):
    return x * np.clip(x + 3, 0, 6) / 6


def embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return weight[indices]


def where(cond, a, b):
    dt = _result_dtype(a, b)
    return np.where(cond, a, b).astype(dt) if dt is not None else np.where(cond, a, b)


def masked_fill(x, mask, value):
    return np.where(mask, np.asarray(value, dtype=x.dtype), x)


def _like(fill):
    def op(x, *args, dtype=None, **kw):
        value = fill if fill is not None else args[0]
        return np.full(x.shape, value, dtype=dtype or x.dtype)
    return op


def arange(*args, dtype=None, **kw):
    out = np.arange(*args)
    if dtype is None:
        dtype = np.float32 if any(isinstance(a, float) for a in args) else np.int64
    return out.astype(dtype)


def to_dtype(x, dtype=None, *args, **kw):
    if not isinstance(dtype, np.dtype):  # to.dtype(x, dtype) or _to_copy(x, dtype=...)
        dtype = kw.get("dtype")
    return x.astype(dtype) if dtype is not None else x.copy()


def cat(xs, dim=0):
    dt = _result_dtype(*xs)
    return np.concatenate([x.astype(dt, copy=False) for x in xs], axis=dim)


def adaptive_avg_pool2d(x, size):
    if list(size) != [1, 1]:
        raise NotImplementedError(f"adaptive_avg_pool2d to {size}")
    return x.astype(np.float64).mean(axis=(2, 3), keepdims=True).astype(x.dtype)


# --- data movement (integers and floats alike) -----------------------------------------------
def view(x, shape):
    return np.reshape(x, [int(s) for s in shape])


def flatten(x, start_dim=0, end_dim=-1):
    s, e = start_dim % max(x.ndim, 1), end_dim % max(x.ndim, 1)
    return x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1:]) if x.ndim else x.reshape(1)


def unflatten(x, dim, sizes):
    dim %= x.ndim
    return x.reshape(x.shape[:dim] + tuple(sizes) + x.shape[dim + 1:])


def squeeze(x, dim=None):
    axes = [d % x.ndim for d in _dims(dim, x.ndim) if x.shape[d] == 1]
    return np.squeeze(x, axis=tuple(axes))


def expand(x, size, implicit=False):
    lead = len(size) - x.ndim
    shape = [x.shape[i - lead] if s == -1 else s for i, s in enumerate(size)]
    return np.broadcast_to(x, shape)


def slice_(x, dim=0, start=None, end=None, step=1):
    index = [slice(None)] * x.ndim
    index[dim] = slice(start, end, step)
    return x[tuple(index)]


def select(x, dim, index):
    return np.take(x, index, axis=dim)


def split(x, size, dim=0):
    n = x.shape[dim]
    return np.split(x, list(range(size, n, size)), axis=dim)


def split_with_sizes(x, sizes, dim=0):
    return np.split(x, np.cumsum(sizes)[:-1].tolist(), axis=dim)


def chunk(x, chunks, dim=0):
    return split(x, -(-x.shape[dim] // chunks), dim)


def _pad_widths(x, pad):
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    if any(a < 0 or b < 0 for a, b in widths):
        raise NotImplementedError("pad with negative widths (cropping)")
    return widths


COPY_PAD_MODES = {"reflect": "reflect", "replicate": "edge"}  # ATen -> NumPy: values copied


def pad(x, pad, mode="constant", value=None, *, fill=None):
    if mode in COPY_PAD_MODES:
        return np.pad(x, _pad_widths(x, pad), mode=COPY_PAD_MODES[mode])
    if mode != "constant":
        raise NotImplementedError(f"pad mode {mode!r}")
    widths = _pad_widths(x, pad)
    out = np.full([n + a + b for n, (a, b) in zip(x.shape, widths)],
                  fill if fill is not None else (value or 0), dtype=x.dtype)
    out[tuple(slice(a, a + n) for n, (a, _) in zip(x.shape, widths))] = x
    return out


def _pair(v) -> tuple[int, int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return v[0], v[-1]


def max_pool2d(x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False, *, fill=None):
    (kh, kw), (ph, pw), (dh, dw) = _pair(kernel_size), _pair(padding), _pair(dilation)
    sh, sw = _pair(stride) if stride not in ((), [], None) else (kh, kw)

    def out_size(n, k, p, d, s):
        span = n + 2 * p - d * (k - 1) - 1
        o = (-(-span // s) if ceil_mode else span // s) + 1
        return o - 1 if ceil_mode and (o - 1) * s >= n + p else o
    n, c, h, w = x.shape
    ho, wo = out_size(h, kh, ph, dh, sh), out_size(w, kw, pw, dw, sw)
    low = fill if fill is not None else -np.inf
    extra_h = max(0, (ho - 1) * sh + dh * (kh - 1) + 1 - (h + 2 * ph))
    extra_w = max(0, (wo - 1) * sw + dw * (kw - 1) + 1 - (w + 2 * pw))
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w)), constant_values=low)
    out = None
    for i in range(kh):
        for j in range(kw):
            t = xp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
            out = t if out is None else np.maximum(out, t)
    return out


def upsample_nearest2d(x, output_size=None, scale_factors=None):
    """ATen's nearest: source index floor(dst * scale) (float32), scale = 1 / factor when a factor
    is given, else in / out; clamped to the last row/column."""
    h, w = x.shape[-2:]
    if output_size is not None:
        sizes, scales = [int(s) for s in output_size], [np.float32(h / int(output_size[0])), np.float32(w / int(output_size[1]))]
    else:
        f = list(scale_factors)
        sizes = [int(np.floor(h * f[0])), int(np.floor(w * f[-1]))]
        scales = [np.float32(1.0 / f[0]), np.float32(1.0 / f[-1])]
    rows = np.minimum(np.floor(np.arange(sizes[0], dtype=np.float32) * scales[0]).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(sizes[1], dtype=np.float32) * scales[1]).astype(np.int64), w - 1)
    return x[..., rows, :][..., cols]


def _identity(x, *args, **kw):
    return x


def _none(*args, **kw):
    return None


# --- the table ---------------------------------------------------------------------------------
MOVEMENT = {
    "view.default": view, "reshape.default": view, "_unsafe_view.default": view,
    "flatten.using_ints": flatten, "unflatten.int": unflatten,
    "permute.default": lambda x, dims: np.transpose(x, dims),
    "transpose.int": lambda x, a, b: np.swapaxes(x, a, b),
    "t.default": lambda x: x.T,
    "contiguous.default": _identity, "clone.default": lambda x, **kw: x.copy(),
    "alias.default": _identity, "detach.default": _identity, "lift_fresh_copy.default": _identity,
    "dropout.default": lambda x, p=0.5, train=False: _identity(x) if not train else _train_dropout(),
    "unsqueeze.default": lambda x, dim: np.expand_dims(x, dim % (x.ndim + 1)),
    "squeeze.dim": squeeze, "squeeze.dims": squeeze, "squeeze.default": squeeze,
    "expand.default": expand, "slice.Tensor": slice_, "select.int": select,
    "split.Tensor": split, "split_with_sizes.default": split_with_sizes, "chunk.default": chunk,
    "getitem": lambda seq, i: seq[i],
    "pad.default": pad, "constant_pad_nd.default": lambda x, p, value=0: pad(x, p, "constant", value),
    "max_pool2d.default": max_pool2d,
    "upsample_nearest2d.vec": upsample_nearest2d,
    "upsample_nearest2d.default": lambda x, output_size, scales_h=None, scales_w=None: upsample_nearest2d(x, output_size),
}


def _train_dropout():
    raise NotImplementedError("dropout in training mode")


OPS = dict(MOVEMENT) | {
    # shapes, dtypes, metadata
    "sym_size.int": lambda x, dim=0: int(x.shape[dim]),
    # Python arithmetic on sizes (nn.MultiheadAttention's batch * heads)
    "mul": lambda a, b: a * b, "add": lambda a, b: a + b, "sub": lambda a, b: a - b,
    "floordiv": lambda a, b: a // b,
    "_assert_tensor_metadata.default": _none,
    "to.dtype": to_dtype, "_to_copy.default": to_dtype,
    "type_as.default": lambda x, other: x.astype(other.dtype),
    "expand_as.default": lambda x, other: np.broadcast_to(x, other.shape),
    "arange.start": arange, "arange.default": arange, "arange.start_step": arange,
    "ones_like.default": _like(1), "zeros_like.default": _like(0), "full_like.default": _like(None),
    # elementwise arithmetic (float32 in, float32 out: IEEE-exact like PyTorch)
    "add.Tensor": _binary(np.add), "sub.Tensor": _binary(np.subtract),
    "mul.Tensor": _binary(np.multiply), "div.Tensor": _binary(_div, true_div=True),
    "rsub.Scalar": lambda x, other, alpha=1: _binary(np.subtract)(other, x * alpha if alpha != 1 else x),
    "rsub.Tensor": lambda x, other, alpha=1: _binary(np.subtract)(other, x * alpha if alpha != 1 else x),
    "add.Scalar": _binary(np.add), "mul.Scalar": _binary(np.multiply),
    "clamp.default": clamp, "clamp_min.default": lambda x, v: clamp(x, min=v),
    "clamp_max.default": lambda x, v: clamp(x, max=v),
    "relu.default": lambda x: np.maximum(x, np.zeros((), x.dtype)),
    "hardtanh.default": lambda x, lo=-1.0, hi=1.0: clamp(x, lo, hi),
    "where.self": where, "masked_fill.Scalar": masked_fill,
    # transcendental functions and reductions (float64 inside, one rounding)
    "softmax.int": _f64(softmax), "_softmax.default": _f64(softmax),
    "log_softmax.int": _f64(log_softmax), "_log_softmax.default": _f64(log_softmax),
    "layer_norm.default": _f64(layer_norm), "gelu.default": _f64(gelu),
    "exp.default": _f64(np.exp), "sqrt.default": _f64(np.sqrt),
    "rsqrt.default": _f64(lambda x: 1.0 / np.sqrt(x)), "tanh.default": _f64(np.tanh),
    "sigmoid.default": _f64(lambda x: 1.0 / (1.0 + np.exp(-x))),
    "silu.default": _f64(lambda x: x / (1.0 + np.exp(-x))), "hardswish.default": _f64(hardswish),
    "pow.Tensor_Scalar": _f64(np.power),
    "linalg_vector_norm.default": _f64(vector_norm),
    "sum.dim_IntList": _reduce(np.sum), "sum.default": _reduce(np.sum),
    "mean.dim": _reduce(np.mean, np.float32), "mean.default": _reduce(np.mean, np.float32),
    "amax.default": lambda x, dim=(), keepdim=False: x.max(axis=_dims(dim, x.ndim), keepdims=keepdim),
    "max.dim": max_dim,
    "embedding.default": embedding, "cat.default": cat,
    "adaptive_avg_pool2d.default": adaptive_avg_pool2d,
}


def _on_integers(fn):
    """Data movement on an integer tensor: the grid does not matter."""
    return lambda *args, zero_point=0, **kw: fn(*args, **kw)


INTEGER_OPS = {name: _on_integers(fn) for name, fn in MOVEMENT.items()} | {
    "pad.default": lambda x, p, mode="constant", value=None, zero_point=0: _int_pad(x, p, mode, value, zero_point),
    "constant_pad_nd.default": lambda x, p, value=0, zero_point=0: _int_pad(x, p, "constant", value, zero_point),
    "max_pool2d.default": lambda *a, zero_point=0, **kw: max_pool2d(*a, fill=np.iinfo(np.int64).min, **kw),
}


def _int_pad(x, p, mode, value, zero_point):
    if mode in COPY_PAD_MODES:
        return pad(x, p, mode)
    if value not in (None, 0, 0.0):
        raise NotImplementedError(f"integer pad with value {value}: only the real value 0 is on the grid")
    return pad(x, p, mode, fill=zero_point)
