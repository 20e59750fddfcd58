"""What each conv/linear is in an inverted-residual network (by shape, not by name) or in a
transformer encoder (by the tensor groups of tvmptq/quant/tensor_groups.py: ``qkv`` feeds an
attention matmul, ``ffn1`` a GELU lookup table, ``attn_out`` / ``ffn2`` a residual add from the
attention context / from the GELU): shared by recon_sensitivity.py (which roles cost most at low
weight bits), bench_reconstruction.py and bench_qft.py (``--high-bits-roles``: the plan's
per-layer ``LayerOverride`` weight bits for whole roles)."""
from __future__ import annotations

from tvmptq.quant.tensor_groups import tensor_groups


def _depthwise(layer) -> bool:
    return layer.kind == "conv2d" and layer.attrs.get("groups", 1) > 1


def role(layer, kernels) -> str:
    """first | last | depthwise | 1x1 project | 1x1 expand | head | conv kxk | <kind>."""
    if layer is kernels[0]:
        return "first"
    if layer is kernels[-1]:
        return "last"
    if _depthwise(layer):
        return "depthwise"
    if layer.kind == "conv2d":
        w = layer.weight
        if w is not None and tuple(w.shape[2:]) == (1, 1):
            i = kernels.index(layer)
            if _depthwise(kernels[i - 1]):
                return "1x1 project"
            # the 1x1 conv feeding the classifier (EfficientNet's 320 -> 1280 head)
            return "head" if kernels[i + 1] is kernels[-1] and kernels[-1].kind != "conv2d" else "1x1 expand"
        return "conv kxk"
    return layer.kind


def kernels_of(graph) -> list:
    return [lay for lay in graph.layers if lay.weight is not None]


def transformer_roles(graph) -> dict:
    """Linear layer name -> qkv | ffn1 | attn_out | ffn2, for the linears a transformer's tensor
    groups name (empty for a network without them)."""
    groups = {t: g for g, names in tensor_groups(graph).items() for t in names}
    by_out = {graph.tensor_of(lay.out_node): lay for lay in graph.layers}
    out = {}
    for lay in kernels_of(graph):
        if lay.kind != "linear":
            continue
        g = groups.get(graph.tensor_of(lay.out_node))
        if g == "qkv":
            out[lay.name] = "qkv"
        elif g == "ffn_pre":
            out[lay.name] = "ffn1"
        elif g == "proj_out":
            src = by_out.get(graph.tensor_of(lay.inputs[0]))
            out[lay.name] = "ffn2" if src is not None and src.kind == "lut" else "attn_out"
    return out


def roles_of(graph) -> dict:
    """Layer name -> role, in graph order (a transformer role where the layer has one)."""
    ks, tr = kernels_of(graph), transformer_roles(graph)
    return {lay.name: tr.get(lay.name) or role(lay, ks) for lay in ks}


def bits_label(graph, tag: str, wide: str | None, roles, overrides) -> str:
    """A row's bits: ``W4A8``, the --wide spec, and the roles at 8-bit weights with how many
    layers and the weight bits averaged over all weights (mixed precision reported by name)."""
    out = tag + (f" {wide}" if wide else "")
    if overrides:
        low = int(tag[1])
        ks = kernels_of(graph)
        total = sum(lay.weight.size for lay in ks)
        avg = sum(lay.weight.size * overrides.get(lay.name, {}).get("weight_bits", low) for lay in ks) / total
        out += f" {'+'.join(roles)}@W8 ({len(overrides)} of {len(ks)} layers, avg {avg:.2f} b)"
    return out


def weight_bit_overrides(graph, roles, bits: int) -> dict:
    """``make_config(overrides=...)`` putting every layer of ``roles`` (names as in :func:`role`,
    spaces or underscores) at ``bits``-bit weights; an unknown role is an error naming the known ones."""
    have = roles_of(graph)
    wanted = {r.replace("_", " ") for r in roles}
    unknown = sorted(wanted - set(have.values()))
    if unknown:
        raise SystemExit(f"unknown layer roles {unknown}: this model has {sorted(set(have.values()))}")
    return {n: {"weight_bits": bits} for n, r in have.items() if r in wanted}
