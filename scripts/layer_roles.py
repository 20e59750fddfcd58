"""What each conv/linear is in an inverted-residual network (by shape, not by name): shared by
recon_sensitivity.py (which roles cost most at low weight bits) and bench_reconstruction.py
(``--high-bits-roles``: the plan's per-layer ``LayerOverride`` weight bits for whole roles)."""
from __future__ import annotations


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


def roles_of(graph) -> dict:
    """Layer name -> role, in graph order."""
    ks = kernels_of(graph)
    return {lay.name: role(lay, ks) for lay in ks}


def weight_bit_overrides(graph, roles, bits: int) -> dict:
    """``make_config(overrides=...)`` putting every layer of ``roles`` (names as in :func:`role`,
    spaces or underscores) at ``bits``-bit weights; an unknown role is an error naming the known ones."""
    have = roles_of(graph)
    wanted = {r.replace("_", " ") for r in roles}
    unknown = sorted(wanted - set(have.values()))
    if unknown:
        raise SystemExit(f"unknown layer roles {unknown}: this model has {sorted(set(have.values()))}")
    return {n: {"weight_bits": bits} for n, r in have.items() if r in wanted}
