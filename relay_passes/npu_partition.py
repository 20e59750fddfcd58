"""PartitionForNPU: the integer program split into what an NPU would run and what falls back.

``tvm.relax.transform.FuseOpsByPattern`` groups each lowered integer operator (npu_patterns: a
conv, depthwise conv, linear, add, mean or concat with its requantize; pad, reshape, max pool,
transpose) into a composite function ``<npu>.<kind>`` when the NPU's capability table
(:class:`NPUCapabilities`, data: targets/npu/ethos_u_ops.toml, from Vela's supported-operator
rules) accepts it: the op kind, strides, kernel sizes, weight sums, channel and reduction limits,
8-bit activations. Everything else stays in ``main`` and is the CPU's: the report names each such
op (a plan layer by its name, any other op by its Relax op and binding) with the rule it breaks.
The quantize of the float model input and the dequantize of its output are the host's I/O (a
fully-integer TFLite model takes and gives int8), reported apart.

TVM 0.27 has no Ethos-U code generator, so the composites are left without a ``Codegen``
attribute: the partitioned module still builds for llvm, and running it is the check that the
partition changed nothing (bit-exact with the unpartitioned program).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.relax.transform import FusionPattern, FuseOpsByPattern

from tvmptq.quant.plan import QuantPlan

from .errors import LoweringError
from .match import _is_const, op_name
from .npu_patterns import NPU_KINDS, RULE_OF
from .tensorize.pattern import _kernel_kind, _layer_names

REPORT_ATTR = "tvmptq_npu_partition"
_MOVEMENT_NAMES = {"relax.nn.pad": "pad", "relax.nn.max_pool2d": "max_pool2d", "relax.reshape": "reshape",
                   "relax.flatten": "flatten", "relax.squeeze": "squeeze", "relax.expand_dims": "expand_dims",
                   "relax.permute_dims": "transpose"}
_RESCALE_OPS = ("relax.astype", "relax.multiply", "relax.add", "relax.right_shift")


@dataclass(frozen=True)
class OpRule:
    """What one NPU accepts of one op kind (None: no limit). ``source``: the rule's origin."""

    tflite: str                                   # the TFLite operator the exporter writes for it
    stride_max: int | None = None
    stride_above_max_needs_valid: bool = False    # larger strides only with dilation 1, no padding
    kernel_h_max: int | None = None               # dilated kernel height
    kernel_area_max: int | None = None            # dilated kernel width x height
    weight_abs_sum_max: int | None = None         # per output channel, sum of |w - z_w|
    depth_multiplier_needs_one_input_channel: bool = False
    batch_max: int | None = None
    reduced_elements_max: int | None = None
    reduced_axis_max: int | None = None
    depth_reduction_needs_unit_dim: bool = False  # reducing C only if one of H, W, C is 1
    source: str = ""


@dataclass(frozen=True)
class NPUCapabilities:
    """One NPU's operator support: a rule per op kind it takes (a kind not listed runs on the CPU)."""

    name: str
    ops: dict = field(default_factory=dict)       # kind -> OpRule
    activation_dtypes: tuple = ("int8", "uint8")  # the 8-bit containers (uint8 exports as int8 - 128)
    activation_bits: int = 8
    tensor_dim_max: int = 65536
    source: str = ""


@dataclass(frozen=True)
class PartitionEntry:
    name: str          # the plan layer, or "<relax op> <binding>" for other ops
    kind: str
    on_npu: bool
    tflite: str = ""   # the TFLite operator (NPU entries)
    reason: str = ""   # why it falls back
    ops: int = 1       # Relax ops in it

    def __str__(self) -> str:
        where = f"NPU ({self.tflite})" if self.on_npu else f"CPU: {self.reason}"
        return f"{self.name} [{self.kind}, {self.ops} op(s)]: {where}"


def _shape(e) -> tuple:
    return tuple(int(d) for d in e.ty.shape)


def _dtype(e) -> str:
    return str(getattr(e.ty, "dtype", ""))


class _Partition:
    """The pass body; ``report`` holds one PartitionEntry per NPU operator or fallback after a run."""

    def __init__(self, caps: NPUCapabilities, plan: QuantPlan | None = None):
        self.caps, self.plan = caps, plan
        self.report: list[PartitionEntry] = []
        self.host_ops = 0

    # -- names: plan layers for the anchors of the lowered program ------------------------------
    def _names(self, bindings) -> dict:
        by_weight, mm_names = _layer_names(self.plan)
        by_kind = {}
        if self.plan is not None:
            for s in self.plan.program:
                if s["kind"] == "layer":
                    lp = self.plan.layer(s["layer"])
                    by_kind.setdefault(lp.kind, []).append(lp.name)
        names, seen = {}, {}
        for b in bindings:
            kind, name = _kernel_kind(b, by_weight, mm_names, 0)
            if kind in ("conv2d", "linear"):
                names[b.var] = name
                continue
            v, o = b.value, op_name(b.value)
            if o in _MOVEMENT_NAMES:  # no plan layer: named by kind and position ("pad#2")
                i = seen[o] = seen.get(o, 0) + 1
                names[b.var] = f"{_MOVEMENT_NAMES[o]}#{i}"
                continue
            kind = {"relax.sum": "mean", "relax.concat": "cat"}.get(o)
            if o == "relax.add" and _dtype(v) == "int64" and not any(_is_const(a) for a in v.args):
                kind = "add"
            if kind is not None:
                i = seen[kind] = seen.get(kind, -1) + 1
                pool = by_kind.get(kind, [])
                names[b.var] = pool[i] if i < len(pool) else b.var.name
        return names

    def _layer(self, name: str):
        if self.plan is None:
            return None
        try:
            return self.plan.layer(name)
        except (KeyError, ValueError):
            return None

    # -- the rules ------------------------------------------------------------------------------
    def _facts(self, kind: str, m: dict, val) -> dict | None:
        """What the rules look at, from the matched exprs (``val``: a matched var's value); None:
        the match is not this kind."""
        a = m["anchor"]
        first = val(a.args[0])
        f = {"in_shape": None if isinstance(first, relax.Tuple) else _shape(a.args[0]),
             "out_shape": _shape(m["out"]), "in_dtype": None, "out_dtype": _dtype(m["out"])}

        def source(e):  # the region's input behind an operand's astype / rescale ops
            while isinstance(val(e), relax.Call) and op_name(val(e)) in _RESCALE_OPS and val(e) is not e:
                e = val(e).args[0]
            return e
        if kind in ("conv2d", "depthwise_conv2d", "linear"):
            conv = op_name(a) == "relax.nn.conv2d"
            if conv != (kind != "linear"):
                return None
            f["in_dtype"] = _dtype(m["x"])
            w = m["w"].value.numpy().astype(np.int64)
            if conv:
                groups, cin = int(a.attrs.groups), _shape(a.args[0])[1]
                depthwise = groups > 1 and groups == cin
                if kind == "conv2d" and groups != 1 and not depthwise:
                    f["unsupported"] = f"grouped conv (groups={groups} of {cin} channels): no TFLite/NPU operator"
                elif (kind == "depthwise_conv2d") != depthwise:
                    return None
                d = [int(x) for x in a.attrs.dilation]
                kh, kw = w.shape[2:]
                f.update(stride=[int(x) for x in a.attrs.strides], dilation=d, padded=any(int(p) for p in a.attrs.padding),
                         kernel=((kh - 1) * d[0] + 1, (kw - 1) * d[1] + 1), depth_multiplier=w.shape[0] // groups,
                         in_channels=cin, weight_abs_sum=int(np.abs(w).reshape(w.shape[0], -1).sum(1).max()))
            else:
                f["weight_abs_sum"] = int(np.abs(w).sum(0).max())
        elif kind == "mean":
            x = first.args[0]  # sum(astype(x))
            f["in_dtype"], f["in_shape"] = _dtype(x), _shape(x)
            axes = [int(ax) % len(f["in_shape"]) for ax in a.attrs.axis]
            f["reduced"] = [f["in_shape"][ax] for ax in axes]
            f["reduces_depth"] = 1 in axes and len(f["in_shape"]) == 4  # C of NCHW is NHWC's depth
        elif kind.startswith("cat"):
            parts = [source(p) for p in first.fields]  # >> (+ (* (astype x)))
            f["in_dtype"] = next((_dtype(p) for p in parts if _dtype(p) not in self.caps.activation_dtypes),
                                 _dtype(parts[0]))
        elif kind == "add":
            terms = [source(t) for t in a.args]  # astype(x) [* m]
            f["in_dtype"] = next((_dtype(t) for t in terms if _dtype(t) not in self.caps.activation_dtypes),
                                 _dtype(terms[0]))
        else:
            f["in_dtype"] = _dtype(first)
        return f

    def _violations(self, kind: str, f: dict, layer) -> list[str]:
        caps, rule_kind = self.caps, RULE_OF.get(kind, kind)
        rule = caps.ops.get(rule_kind)
        if "unsupported" in f:
            return [f["unsupported"]]
        if rule is None:
            return [f"{rule_kind} is not an operator {caps.name} runs (Vela leaves it on the CPU)"]
        out = []
        for what, dt in (("input", f["in_dtype"]), ("output", f["out_dtype"])):
            if dt is not None and dt not in caps.activation_dtypes:
                out.append(f"{what} is {dt}: {caps.name} takes {'/'.join(caps.activation_dtypes)} feature maps here")
        if layer is not None and self.plan is not None:
            t = self.plan.tensors[layer.output]
            if t.bits < caps.activation_bits:
                out.append(f"{t.bits}-bit activations (tensor {t.name!r}): {caps.name} computes "
                           f"{caps.activation_bits}-bit activations and they are not rounded up silently")
        for s in (f["in_shape"], f["out_shape"]):
            if s and max(s[1:], default=1) > caps.tensor_dim_max:
                out.append(f"shape {s}: a dimension above {caps.tensor_dim_max}")
        if rule.stride_max is not None and "stride" in f and max(f["stride"]) > rule.stride_max:
            if not (rule.stride_above_max_needs_valid and max(f["dilation"]) == 1 and not f["padded"]):
                out.append(f"stride {f['stride']} > {rule.stride_max}"
                           + (" with padding or dilation" if rule.stride_above_max_needs_valid else ""))
        if "kernel" in f:
            kh, kw = f["kernel"]
            if rule.kernel_h_max is not None and kh > rule.kernel_h_max:
                out.append(f"(dilated) kernel height {kh} > {rule.kernel_h_max}")
            if rule.kernel_area_max is not None and kh * kw > rule.kernel_area_max:
                out.append(f"(dilated) kernel area {kh}x{kw} > {rule.kernel_area_max}")
        if rule.weight_abs_sum_max is not None and f.get("weight_abs_sum", 0) > rule.weight_abs_sum_max:
            out.append(f"sum of |weights| {f['weight_abs_sum']} > {rule.weight_abs_sum_max}")
        if rule.depth_multiplier_needs_one_input_channel and f.get("depth_multiplier", 1) > 1 and f["in_channels"] != 1:
            out.append(f"depth multiplier {f['depth_multiplier']} with {f['in_channels']} input channels")
        shape = f["in_shape"]
        if rule.batch_max is not None and shape and shape[0] > rule.batch_max:
            out.append(f"batch {shape[0]} > {rule.batch_max}")
        if "reduced" in f:
            n = int(np.prod(f["reduced"]))
            if rule.reduced_elements_max is not None and n > rule.reduced_elements_max:
                out.append(f"{n} reduced elements > {rule.reduced_elements_max}")
            if rule.reduced_axis_max is not None and max(f["reduced"]) > rule.reduced_axis_max:
                out.append(f"reduced axis of {max(f['reduced'])} > {rule.reduced_axis_max}")
            if rule.depth_reduction_needs_unit_dim and f["reduces_depth"] and 1 not in shape[1:]:
                out.append(f"reduction over channels of {shape} (only if one of H, W, C is 1)")
        return out

    def _check(self, kind, names, order, accepted, rejected):
        def check(ctx) -> bool:
            m = dict(ctx.annotated_expr)
            region = list(ctx.matched_bindings.keys())
            root = max(region, key=lambda v: order.get(v, -1))
            anchor = ctx.value_to_bound_var.get(m["anchor"]) if m["anchor"] in ctx.value_to_bound_var else None
            name = names.get(anchor, f"{op_name(m['anchor'])} {anchor.name if anchor is not None else root.name}")
            bound = dict(ctx.matched_bindings)
            f = self._facts(kind, m, lambda e: bound.get(e, e))
            if f is None:
                return False
            bad = self._violations(kind, f, self._layer(name))
            key = order.get(root, -1)
            if bad:
                rejected[key] = (name, RULE_OF.get(kind, kind), "; ".join(bad), set(region))
                return False
            rule = self.caps.ops[RULE_OF.get(kind, kind)]
            accepted[key] = (name, kind, rule.tflite, set(region))
            rejected.pop(key, None)
            return True
        return check

    # -- the pass -------------------------------------------------------------------------------
    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        func = mod["main"]
        bindings = [b for block in func.body.blocks for b in block.bindings]
        order = {b.var: i for i, b in enumerate(bindings)}
        names = self._names(bindings)
        accepted, rejected = {}, {}
        patterns = []
        for kind, build in NPU_KINDS.items():
            pat, named = build()
            patterns.append(FusionPattern(f"{self.caps.name}.{kind}", pat, named,
                                          self._check(kind, names, order, accepted, rejected)))
        out = FuseOpsByPattern(patterns, bind_constants=False, annotate_codegen=False)(mod)
        self.report, self.host_ops = self._report(bindings, func, names, accepted, rejected)
        self._verify(out, accepted, bindings)
        return out.with_attr(REPORT_ATTR, [str(e) for e in self.report])

    def _report(self, bindings, func, names, accepted, rejected):
        params = set(func.params)
        outputs = set()
        for b in bindings:
            if isinstance(b.value, relax.Tuple):
                outputs |= {f for f in b.value.fields if isinstance(f, relax.Var)}
        on_npu = set().union(*(r[3] for r in accepted.values())) if accepted else set()
        entries, host, grouped = {}, 0, {}
        for key, (name, kind, tfl, region) in accepted.items():
            entries[key] = PartitionEntry(name, kind, True, tfl, ops=len(region))
        for key, (name, kind, why, region) in rejected.items():
            left = region - on_npu
            if left:
                entries[key] = PartitionEntry(name, kind, False, reason=why, ops=len(left))
                grouped.update({v: key for v in left})
        for i, b in enumerate(bindings):
            if b.var in on_npu or b.var in grouped or not isinstance(b.value, relax.Call):
                continue
            o = op_name(b.value) or "call"
            if (o == "relax.quantize" and b.value.args[0] in params) or (o == "relax.dequantize" and b.var in outputs):
                host += 1
                continue
            why = ("computes in float (a float island)" if "float" in _dtype(b.value)
                   else f"no {self.caps.name} operator matches this integer op")
            entries[i] = PartitionEntry(names.get(b.var, f"{o} (binding {i})"), o.removeprefix("relax."), False,
                                        reason=why)
        return [entries[k] for k in sorted(entries)], host

    def _verify(self, out, accepted, bindings):
        """The fused module holds exactly the accepted composites, and every other op is left."""
        composites = {gv.name_hint: f.attrs["Composite"] for gv, f in out.functions.items()
                      if isinstance(f, relax.Function) and f.attrs is not None and "Composite" in f.attrs}
        calls = [str(composites[b.value.op.name_hint]) for block in out["main"].body.blocks for b in block.bindings
                 if isinstance(b.value, relax.Call) and isinstance(b.value.op, relax.GlobalVar)
                 and b.value.op.name_hint in composites]
        want = [f"{self.caps.name}.{accepted[k][1]}" for k in sorted(accepted)]
        if sorted(calls) != sorted(want):
            raise LoweringError(f"NPU partition: FuseOpsByPattern made {len(calls)} composite(s), the checks "
                                f"accepted {len(want)}")


@tvm.transform.module_pass(opt_level=0, name="tvmptq.PartitionForNPU")
class PartitionForNPU(_Partition):
    """Group the integer program into the composite functions ``caps`` accepts (one per NPU
    operator; see the module doc). ``plan``: optional, to name layers and check their activation
    bits. After the pass ``report`` holds a PartitionEntry per NPU operator and per fallback, in
    program order (also kept as text in the module attribute ``REPORT_ATTR``); ``host_ops`` counts
    the float input quantize and output dequantize."""

    def __init__(self, caps: NPUCapabilities, plan: QuantPlan | None = None):
        super().__init__(caps, plan)


def fallbacks(report) -> list[PartitionEntry]:
    return [e for e in report if not e.on_npu]


def format_partition(report, caps_name: str, host_ops: int = 0) -> str:
    npu = [e for e in report if e.on_npu]
    cpu = fallbacks(report)
    lines = [f"{caps_name}: {len(npu)} operator(s) on the NPU, {len(cpu)} on the CPU"
             + (f" (+ {host_ops} host I/O op(s): the float input's quantize, the output's dequantize)" if host_ops else "")]
    lines += [f"  {e}" for e in report]
    return "\n".join(lines)
