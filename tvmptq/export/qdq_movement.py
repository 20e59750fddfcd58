"""Data movement steps of the program (reshape, permute, slice, pad, max pool, ...) as ONNX ops:
on integer values they run between a DequantizeLinear and a QuantizeLinear of the same grid,
which is exact."""
from __future__ import annotations


import numpy as np

from .qdq_values import _IDENTITY_OPS, _INT64_MAX, _RESHAPE_OPS
from .qdq_graph import QDQGraph


class QDQMovement(QDQGraph):
    # -- data movement (integer values between DQ and Q, or float values) ------------------
    def _movement(self, op: str, x: str, r: int, rest: list, kwargs: dict, name: str):
        """(output name, rank), or (None, r) where the op changes nothing."""
        if op in _IDENTITY_OPS:
            return None, r
        if op == "flatten.using_ints":
            start = (rest[0] if rest else kwargs.get("start_dim", 0)) % r
            end = (rest[1] if len(rest) > 1 else kwargs.get("end_dim", -1)) % r
            if start == 1 and end == r - 1:
                return self.node("Flatten", [x], f"{name}_flatten", axis=1), 2
            if start == end:
                return None, r
            return self._reshape(x, name)
        if op in ("view.default", "reshape.default", "_unsafe_view.default") and self.batch is None:
            shape = list(rest[0] if rest else kwargs["shape"] if "shape" in kwargs else kwargs["size"])
            if any(isinstance(s, (int, np.integer)) and s == 0 for s in shape):
                raise NotImplementedError(f"reshape (step {name!r}) to a zero-size dimension")
            return self.node("Reshape", [x, self.ints(f"{name}_shape", shape)], f"{name}_reshape"), len(shape)
        if op == "unsqueeze.default":
            d = (rest[0] if rest else kwargs["dim"]) % (r + 1)
            return self.node("Unsqueeze", [x, self.ints(f"{name}_axes", [d])], f"{name}_unsqueeze"), r + 1
        if op in ("squeeze.dim", "squeeze.dims", "squeeze.default"):
            dims = rest[0] if rest else kwargs.get("dim")
            shape = self._static_shape_in(name, x)
            axes = [d % r for d in (range(r) if dims is None else dims if isinstance(dims, (list, tuple))
                                    else [dims]) if shape[d % r] == 1]
            if not axes:
                return None, r
            return self.node("Squeeze", [x, self.ints(f"{name}_axes", axes)], f"{name}_squeeze"), r - len(axes)
        if op in _RESHAPE_OPS:
            return self._reshape(x, name)
        if op == "expand.default":
            size = list(rest[0] if rest else kwargs["size"])
            if self.batch is None:  # Expand broadcasts: a kept dimension (-1) is written as 1
                shape = self.ints(f"{name}_shape", [1 if isinstance(s, int) and s == -1 else s for s in size])
            else:
                shape = self.init(f"{name}_shape", np.array(self._static_shape(name), np.int64))
            return self.node("Expand", [x, shape], f"{name}_expand"), len(size)
        if op in ("permute.default", "transpose.int", "t.default"):
            if op == "permute.default":
                perm = [d % r for d in (rest[0] if rest else kwargs["dims"])]
            elif op == "transpose.int":
                perm = list(range(r))
                a, b = rest[0] % r, rest[1] % r
                perm[a], perm[b] = perm[b], perm[a]
            else:
                perm = [1, 0][:r]
            return self.node("Transpose", [x], f"{name}_transpose", perm=perm), r
        if op == "slice.Tensor":
            p = {**dict(zip(["dim", "start", "end", "step"], rest)), **kwargs}
            dim, start, end, stp = p.get("dim", 0) % r, p.get("start"), p.get("end"), p.get("step", 1)
            if start in (None, 0) and stp == 1 and (end is None or (isinstance(end, int) and end >= _INT64_MAX)):
                return None, r
            starts = self.ints(f"{name}_starts", [0 if start is None else start])
            ends = self.ints(f"{name}_ends", [_INT64_MAX if end is None else end])
            return self.node("Slice", [x, starts, ends, self.ints(f"{name}_axes", [dim]),
                                       self.ints(f"{name}_steps", [stp])], f"{name}_slice"), r
        if op == "select.int":
            p = {**dict(zip(["dim", "index"], rest)), **kwargs}
            idx = self.init(f"{name}_index", np.array(int(p["index"]), np.int64))
            return self.node("Gather", [x, idx], f"{name}_select", axis=p["dim"] % r), r - 1
        if op in ("pad.default", "constant_pad_nd.default"):
            return self._pad(op, x, r, rest, kwargs, name), r
        if op == "max_pool2d.default":
            return self._max_pool(x, rest, kwargs, name), r
        raise AssertionError(op)  # pragma: no cover - _MOVEMENT_OPS lists exactly the branches above

    def _static_shape(self, name: str) -> list[int]:
        """The output shape of step ``name``: fixed at the export batch, or with the one dimension
        that follows the batch written as -1 (dynamic batch)."""
        shape = lambda b: list(np.shape(getattr(v := self.static_values(b)[name], "q", v)))  # noqa: E731
        if self.batch is not None:
            return shape(self.batch)
        a, b = shape(2), shape(3)
        varying = [i for i, (m, n) in enumerate(zip(a, b)) if m != n]
        if len(a) != len(b) or len(varying) > 1:
            raise NotImplementedError(f"step {name!r}: output shape {a} (batch 2) / {b} (batch 3) cannot "
                                      "be written for a dynamic batch; export with a fixed batch")
        return [-1 if i in varying else n for i, n in enumerate(a)]

    def _static_shape_in(self, name: str, x: str) -> list[int]:
        """The input shape of the op of step ``name`` at the export batch (2 if dynamic)."""
        step = next(s for s in self.plan.program if s.get("name") == name and s["kind"] == "op")
        v = self.static_values(self.batch or 2)[step["args"][0]["value"]]
        return list(np.shape(getattr(v, "q", v)))

    def _reshape(self, x: str, name: str) -> tuple[str, int]:
        shape = self._static_shape(name)
        return self.node("Reshape", [x, self.init(f"{name}_shape", np.array(shape, np.int64))],
                         f"{name}_reshape"), len(shape)

    def _pad(self, op: str, x: str, rank: int, rest: list, kwargs: dict, name: str) -> str:
        widths = list(rest[0] if rest else kwargs["pad"])
        if op == "pad.default":
            mode = rest[1] if len(rest) > 1 else kwargs.get("mode", "constant")
            value = rest[2] if len(rest) > 2 else kwargs.get("value")
        else:
            mode, value = "constant", rest[1] if len(rest) > 1 else kwargs.get("value", 0)
        if mode != "constant" or value not in (None, 0, 0.0):
            raise NotImplementedError(f"pad (step {name!r}) mode={mode!r} value={value!r}: only zero "
                                      "constant padding")
        if any(w < 0 for w in widths):
            raise NotImplementedError(f"pad (step {name!r}) with negative widths (cropping)")
        # torch lists (begin, end) from the last dimension backwards. Pads for every dimension, not
        # the opset-18 `axes` input: ORT 1.32's NHWC layout transform mis-permutes Pad axes.
        begin, end = [0] * rank, [0] * rank
        for i in range(len(widths) // 2):
            begin[rank - 1 - i], end[rank - 1 - i] = widths[2 * i], widths[2 * i + 1]
        return self.node("Pad", [x, self.init(f"{name}_pads", np.array(begin + end, np.int64)),
                                 self.scalar_f32(f"{name}_value", 0.0)], f"{name}_pad", mode="constant")

    def _max_pool(self, x: str, rest: list, kwargs: dict, name: str) -> str:
        names = ["kernel_size", "stride", "padding", "dilation", "ceil_mode"]
        defaults = {"stride": (), "padding": 0, "dilation": 1, "ceil_mode": False}
        p = {**defaults, **dict(zip(names, rest)), **kwargs}
        pair = lambda v: [v[0], v[-1]] if isinstance(v, (list, tuple)) else [v, v]  # noqa: E731
        k = pair(p["kernel_size"])
        s = pair(p["stride"]) if p["stride"] not in ((), [], None) else k
        ph, pw = pair(p["padding"])
        return self.node("MaxPool", [x], f"{name}_maxpool", kernel_shape=k, strides=s,
                         pads=[ph, pw, ph, pw], dilations=pair(p["dilation"]),
                         ceil_mode=int(bool(p["ceil_mode"])))
