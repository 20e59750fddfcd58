"""Capture: a PyTorch model as one ``torch.export`` ATen graph (fixed or dynamic batch), and the
float rewrites done on it before classification (batch norm folded into the conv before it, a
standalone batch norm as a depthwise 1x1 conv, an ONNX MatMul + Add as a linear). ``const_value``
evaluates the constant subgraphs the rewrites and the classifier ask about."""
from __future__ import annotations

import torch
import torch.fx as fx

from ..errors import ModelError, UnsupportedOpError

aten = torch.ops.aten


def export_model(module: torch.nn.Module, example_inputs: tuple, batch: int | None = None) -> fx.GraphModule:
    """Capture the model as an ATen graph; clear errors for what torch.export cannot take.

    ``batch``: the batch size the model's graph fixes (an ONNX file or ``.pt2`` exported at batch
    1, say), captured at exactly that size; None: a dynamic batch dimension, and where the model
    cannot be captured with one, the examples' own batch size instead. The graph's ``fixed_batch``
    attribute says which (None: dynamic). Attention ops are decomposed (quant/decompose.py)."""
    from .decompose import decompose

    module = module.eval()
    if batch is None:
        # A dynamic batch dimension lets one graph run calibration and evaluation batches of any
        # size. torch.export specializes sizes 0 and 1, so the example is given a batch of 2.
        examples = tuple(torch.cat([t[:1], t[:1]]) for t in example_inputs)
        dynamic = tuple({0: torch.export.Dim.AUTO} for _ in examples)
        try:
            with torch.no_grad():
                ep = torch.export.export(module, examples, dynamic_shapes=dynamic)
            if _batch_is_symbolic(ep):
                gm = decompose(ep).module()
                gm.fixed_batch = None
                return gm
            dynamic_error = None  # Dim.AUTO specialised the batch to the example's: the graph fixes it
        except UnsupportedOpError:
            raise
        except Exception as err:  # the graph fixes its batch: capture it at the examples' size
            dynamic_error = err
        batch = len(example_inputs[0])
        example_inputs = tuple(t[:batch] for t in example_inputs)
    else:
        dynamic_error = None
    examples = tuple(example_inputs)
    if len(examples[0]) != batch:
        raise ModelError(f"the model's graph fixes batch size {batch}; example inputs have {len(examples[0])}")
    try:
        with torch.no_grad():
            gm = decompose(torch.export.export(module, examples)).module()
    except UnsupportedOpError:
        raise
    except Exception as err:  # torch raises many types; the message is what helps users
        err = dynamic_error or err
        raise ModelError(f"torch.export could not capture the model: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from err
    gm.fixed_batch = batch
    return gm


def _batch_is_symbolic(ep) -> bool:
    """Whether dim 0 of every user tensor input of the captured program is a symbolic size."""
    specs = [s for s in ep.graph_signature.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    vals = [nodes[s.arg.name].meta.get("val") for s in specs if s.arg.name in nodes]
    return all(not isinstance(v, torch.Tensor) or (v.dim() > 0 and isinstance(v.shape[0], torch.SymInt))
               for v in vals)


def _attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def const_value(gm: fx.GraphModule, node) -> torch.Tensor | None:
    """Value of a node computed from parameters/constants only (folded here), else None."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "get_attr":
        return _attr(gm, node.target).detach()
    if node.op != "call_function":
        return None
    if not any(isinstance(a, fx.Node) for a in node.args):
        return None
    # Node arguments may sit inside lists (a size list holding the symbolic batch, as in
    # ``cls.expand(b, 1, -1)``): such a node is not constant and is never evaluated.
    missing = object()

    def fold(a):
        if isinstance(a, fx.Node):
            v = const_value(gm, a)
            return missing if v is None else v
        if isinstance(a, (list, tuple)):
            vals = [fold(x) for x in a]
            return missing if any(v is missing for v in vals) else type(a)(vals)
        return a
    args = fold(list(node.args))
    kwargs = {k: fold(v) for k, v in node.kwargs.items()}
    if args is missing or any(v is missing for v in kwargs.values()):
        return None
    with torch.no_grad():
        return node.target(*args, **kwargs)


def _new_param(gm: fx.GraphModule, name: str, value: torch.Tensor, before: fx.Node) -> fx.Node:
    gm.register_buffer(name, value.detach().clone())
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(name)


_BATCH_NORMS = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)


def _batch_norm_affine(gm: fx.GraphModule, bn: fx.Node):
    """An eval batch norm as the per-channel affine ``y = g * x + h`` (float64), or None when its
    statistics are not constants."""
    gamma, beta, mean, var = (const_value(gm, a) for a in bn.args[1:5])
    if mean is None or var is None:
        return None
    eps = bn.args[7] if bn.target == aten.batch_norm.default else bn.args[6]
    g = torch.rsqrt(var.double() + eps)
    if gamma is not None:
        g = g * gamma.double()
    h = -mean.double() * g + (beta.double() if beta is not None else 0)
    return g, h


def _replace_batch_norm(gm: fx.GraphModule, bn: fx.Node, new: fx.Node) -> None:
    """Route the batch norm's users to ``new`` and drop it (the no-training form returns a tuple
    read through getitem(bn, 0))."""
    if bn.target == aten._native_batch_norm_legit_no_training.default:
        for u in list(bn.users):
            u.replace_all_uses_with(new)
            gm.graph.erase_node(u)
    else:
        bn.replace_all_uses_with(new)
    gm.graph.erase_node(bn)


def fold_batch_norm(gm: fx.GraphModule) -> int:
    """Fold eval-mode batch norm into the conv that feeds it; returns how many were folded."""
    folded = 0
    for bn in list(gm.graph.nodes):
        if bn.target not in _BATCH_NORMS:
            continue
        conv = bn.args[0]
        if not (isinstance(conv, fx.Node) and conv.target == aten.conv2d.default and len(conv.users) == 1):
            continue
        w = const_value(gm, conv.args[1])
        b = const_value(gm, conv.args[2]) if len(conv.args) > 2 and conv.args[2] is not None else None
        affine = _batch_norm_affine(gm, bn)
        if w is None or affine is None:
            continue
        g, h = affine
        new_w = (w.double() * g.view(-1, 1, 1, 1)).float()
        new_b = ((b.double() * g if b is not None else 0) + h).float()
        wn = _new_param(gm, f"{conv.name}_folded_weight", new_w, conv)
        bnode = _new_param(gm, f"{conv.name}_folded_bias", new_b, conv)
        args = list(conv.args) + [None] * (7 - len(conv.args))
        defaults = [None, None, None, [1, 1], [0, 0], [1, 1], 1]
        args = [a if a is not None else d for a, d in zip(args, defaults)]
        args[1], args[2] = wn, bnode
        conv.args = tuple(args)
        _replace_batch_norm(gm, bn, conv)
        folded += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return folded


def batch_norm_as_conv(gm: fx.GraphModule) -> int:
    """Eval batch norm on NCHW that follows no conv -> a depthwise 1x1 conv (per-channel affine),
    which the plan quantizes like any conv; relay_passes/batch_norm.py does the same in Relax."""
    done = 0
    for bn in list(gm.graph.nodes):
        if bn.target not in _BATCH_NORMS:
            continue
        x = bn.args[0]
        val = x.meta.get("val") if isinstance(x, fx.Node) else None
        affine = _batch_norm_affine(gm, bn)
        if val is None or val.dim() != 4 or affine is None:
            continue
        g, h = affine
        c = g.numel()
        w = _new_param(gm, f"{bn.name}_as_conv_weight", g.float().view(c, 1, 1, 1), bn)
        bias = _new_param(gm, f"{bn.name}_as_conv_bias", h.float(), bn)
        with gm.graph.inserting_before(bn):
            conv = gm.graph.call_function(aten.conv2d.default, (x, w, bias, [1, 1], [0, 0], [1, 1], c))
        conv.meta["val"] = val
        _replace_batch_norm(gm, bn, conv)
        done += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return done


def fold_linear_bias(gm: fx.GraphModule) -> int:
    """``matmul(x, W) + b`` (how ONNX files spell a linear layer on 3-D tokens: MatMul, then Add
    with the bias first) -> ``linear(x, W^T, b)``, so the bias joins the layer's int32 bias as in
    the PyTorch graph; returns how many were folded."""
    folded = 0
    for mm in list(gm.graph.nodes):
        if mm.target not in (aten.matmul.default, aten.mm.default) or len(mm.users) != 1:
            continue
        w = const_value(gm, mm.args[1])
        add = next(iter(mm.users))
        if w is None or w.dim() != 2 or add.target != aten.add.Tensor or len(add.args) != 2 or add.kwargs:
            continue
        other = add.args[0] if add.args[1] is mm else add.args[1]
        b = const_value(gm, other) if isinstance(other, fx.Node) else None
        if b is None or b.shape != (w.shape[1],) or const_value(gm, mm.args[0]) is not None:
            continue
        wn = _new_param(gm, f"{mm.name}_linear_weight", w.t().contiguous(), mm)
        bn = _new_param(gm, f"{mm.name}_linear_bias", b, mm)
        with gm.graph.inserting_before(add):
            linear = gm.graph.call_function(aten.linear.default, (mm.args[0], wn, bn))
        linear.meta = dict(add.meta)
        add.replace_all_uses_with(linear)
        gm.graph.erase_node(add)
        gm.graph.erase_node(mm)
        folded += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return folded
