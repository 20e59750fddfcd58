"""Pass 1: bring the imported graph to the form the plan was made on (conv2d + bias add).

The plan is built on the PyTorch graph with batch norm folded into the preceding conv. Relax's
``FoldBatchnormToConv2D`` does the same folding on the import, as a graph of small ops on
constants (add eps, sqrt, divide, multiply, reshape); a linear layer arrives as
``matmul(x, permute_dims(W))``. These constant subgraphs are then evaluated.

``FoldConstant`` evaluates them by compiling every op with LLVM: 34 s for EfficientNet-Lite0 on
this 2-core machine. ``FoldConstantNumpy`` evaluates the same few elementwise and layout ops in
NumPy (float32, like TVM) in well under a second; relax's FoldConstant still runs after it for
anything else and then finds nothing to do. The folded float values may differ from the plan's
in the last bit; that does not matter: integer layers take every number from the plan and use
the Relax ops only as locations.

ONNX imports (``frontend.import_onnx``) differ from torch.export ones in one way that matters:
Relax's ONNX frontend turns ``Clip(x, lo, hi)`` (opset >= 11, bounds as inputs) into two
``call_tir`` of TOPI's ``maximum``/``minimum`` PrimFuncs, with NaN-sanitized bounds
(``where(isnan(lo), -inf, lo)``), so ReLU6 is not one Relax op the matcher can fuse.
``ClipFromTIR`` turns ``minimum(maximum(x, lo), hi)`` with constant scalar bounds back into
``R.clip(x, lo, hi)`` (a lone bound becomes a clip with an infinite other side), the form the
PyTorch import has. The other ONNX spellings already fold into the PyTorch shapes: conv bias as a
reshaped constant add, Gemm as ``matmul(x, permute_dims(W))`` + add, ReduceMean with negative
axes (the lowering counts elements from the shape).

CanonicalizeBindings removes the tuple the frontend builds around max pool
((out, indices)[0] -> out) so that data movement chains stay visible.
"""
from __future__ import annotations

import re

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from .match import op_name
from .mutate import mutate_functions
from .linear_form import BiasBeforeReshape, UnbroadcastWeights
from .slices import SelectsAsSlices

_BINARY = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
           "relax.divide": np.divide, "relax.power": np.power}
_UNARY = {"relax.sqrt": np.sqrt, "relax.rsqrt": lambda a: 1 / np.sqrt(a), "relax.negative": np.negative,
          "relax.isnan": np.isnan}


def _evaluate(call, args):
    """NumPy value of ``call`` on constant ``args``, or None for ops not handled here."""
    name = op_name(call)
    if name in _BINARY:
        return _BINARY[name](args[0], args[1])
    if name in _UNARY:
        return _UNARY[name](args[0])
    if name == "relax.where":
        return np.where(args[0], args[1], args[2])
    if name == "relax.reshape":
        return args[0].reshape([int(d) for d in call.args[1].values])
    if name == "relax.permute_dims":
        axes = call.attrs.axes
        return np.transpose(args[0], None if axes is None else [int(a) for a in axes])
    if name == "relax.expand_dims":
        return np.expand_dims(args[0], tuple(int(a) for a in call.attrs.axis))
    if name == "relax.astype":
        return args[0]  # the cast to the result dtype happens below
    return None


@relax.expr_functor.mutator
class _NumpyFolder(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.values: dict[relax.Var, np.ndarray] = {}

    def _const_arg(self, a):
        if isinstance(a, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):  # scalars such as batch norm's eps
            return a.value
        if isinstance(a, tvm.ir.expr.Constant):
            return a.value.numpy()
        if isinstance(a, relax.Var):
            return self.values.get(a)
        if isinstance(a, relax.ShapeExpr):
            return a
        return None

    def visit_var_(self, var):
        if var in self.values:  # uses of a folded binding see the constant itself
            return relax.const(self.values[var], str(var.ty.dtype))
        return super().visit_var_(var)

    def visit_dataflow_var_(self, var):
        if var in self.values:
            return relax.const(self.values[var], str(var.ty.dtype))
        return super().visit_dataflow_var_(var)

    def visit_var_binding_(self, binding):
        call = binding.value
        ty = binding.var.ty
        if isinstance(call, relax.Call) and isinstance(ty, relax.TensorType) and ty.shape is not None:
            args = [self._const_arg(a) for a in call.args]
            if all(a is not None for a in args):
                value = _evaluate(call, args)
                if value is not None:
                    self.values[binding.var] = np.asarray(value).astype(str(ty.dtype)).reshape(
                        [int(d) for d in ty.shape])
                    return
        super().visit_var_binding_(binding)


@tvm.transform.module_pass(opt_level=0, name="tvmptq.FoldConstantNumpy")
class FoldConstantNumpy:
    """Evaluate constant subgraphs of elementwise and layout ops in NumPy."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        folder = _NumpyFolder(mod)
        return mutate_functions(mod, folder)


_CLIP_TIR = re.compile(r"(maximum|minimum)\d*")


def _scalar_const(e):
    if isinstance(e, tvm.ir.expr.Constant) and e.value.numpy().size == 1:
        return float(e.value.numpy().reshape(()))
    return None


def _tir_bound(call):
    """("maximum" | "minimum", x, bound) for ``call_tir(maximum*, (x, scalar const))``, else None."""
    if not (isinstance(call, relax.Call) and op_name(call) == "relax.call_tir"):
        return None
    gv, args = call.args[0], call.args[1]
    found = _CLIP_TIR.fullmatch(getattr(gv, "name_hint", ""))
    if found is None or not isinstance(args, relax.Tuple) or len(args.fields) != 2:
        return None
    x, bound = args.fields[0], _scalar_const(args.fields[1])
    if bound is None or not isinstance(x.ty, relax.TensorType) or "float" not in str(x.ty.dtype):
        return None
    return found.group(1), x, bound


@relax.expr_functor.mutator
class _ClipRewriter(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        found = _tir_bound(call)
        if found is None:
            return call
        kind, x, bound = found
        if kind == "maximum":
            return R.clip(x, bound, float("inf"))
        # Bindings are visited in order, so a maximum feeding this minimum is already a clip.
        prev = self.lookup_binding(x) if isinstance(x, relax.Var) else None
        if op_name(prev) == "relax.clip" and float(prev.args[2].value) == float("inf"):
            return R.clip(prev.args[0], prev.args[1].value, bound)
        return R.clip(x, float("-inf"), bound)


@tvm.transform.module_pass(opt_level=0, name="tvmptq.ClipFromTIR")
class ClipFromTIR:
    """ONNX Clip (two TOPI call_tir with constant bounds) -> ``R.clip``; see the module docstring."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        rewriter = _ClipRewriter(mod)
        return mutate_functions(mod, rewriter)


def Canonicalize(numpy_fold: bool = True) -> tvm.transform.Pass:  # noqa: N802 (a pass, named like TVM's)
    from .batch_norm import BatchNormAsConv  # batch norm after no conv: a depthwise 1x1 conv
    from .conv_transpose import ConvTransposeAsConv  # first: a batch norm after it folds into its conv
    from .layer_scale import FoldLayerScale  # gamma * linear: after the linear forms are canonical
    passes = [ConvTransposeAsConv(), relax.transform.FoldBatchnormToConv2D()]
    if numpy_fold:
        passes.append(FoldConstantNumpy())
    # (x, indices)[0] from max_pool2d_with_indices -> x, then drop what is no longer used.
    passes += [relax.transform.FoldConstant(), BatchNormAsConv(), ClipFromTIR(), relax.transform.CanonicalizeBindings(),
               relax.transform.DeadCodeElimination(), SelectsAsSlices(), UnbroadcastWeights(), BiasBeforeReshape(),
               FoldLayerScale()]
    return tvm.transform.Sequential(passes, name="tvmptq.Canonicalize")
