"""Entry points: plan -> integer-only Relax module -> compiled callable."""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvmptq.quant.plan import QuantPlan

from .cancel_qdq import CancelQDQ
from .canonicalize import Canonicalize
from .errors import LoweringError
from .frontend import import_model
from .islands import FLOAT_BRANCH_OPS, Float64Islands, float_branch_key, plan_islands
from .lookup_tables import LookupTables
from .match import MatchPlanLayers
from .quantize_layers import QuantizeLayers
from .tensorize_x86 import TensorizeDot
from .verify import VerifyIntegerOnly


def lowering_passes(plan: QuantPlan, requantize: str = "int64", leave_float=(), islands=(),
                    verify: bool = True, precise_islands: bool = True, target=None) -> tvm.transform.Pass:
    """The lowering pipeline. ``precise_islands``: compute LayerNorm/softmax/GELU islands in
    float64 (see islands.Float64Islands) so they round like PyTorch's; off for speed. Declared
    float branches (QwT v1) are lowered as float64 islands and declared to the verifier with the
    plan's other islands (islands.plan_islands). ``target`` (a registry name or targets.Target):
    when given, the target-specific kernel passes run last (tensorize_x86.TensorizeDot: linear
    layers and 1x1 convs as tensorized kernels where the target has VNNI or Arm dotprod; otherwise
    the module is unchanged and a warning names every layer left as it is, and why)."""
    unknown = [f"{lp.name} ({lp.attrs['float_branch'].get('kind')}, features "
               f"{lp.attrs['float_branch'].get('features')})" for lp in plan.layers
               if lp.attrs.get("float_branch") and float_branch_key(lp) not in FLOAT_BRANCH_OPS]
    if unknown:
        raise LoweringError(f"plan has float branches the Relax lowering does not know at {', '.join(unknown)}: "
                            f"it lowers {', '.join(f'{k}/{f}' for k, f in FLOAT_BRANCH_OPS)} (a qwt_v1 plan "
                            "without 'features' predates the lowering: fit it again)")
    passes = [Canonicalize(), LookupTables(plan), MatchPlanLayers(plan), QuantizeLayers(plan, requantize, leave_float), CancelQDQ()]
    if verify:  # the plan's float ops and float branches are the declared islands; ``islands`` adds
        allowed = plan_islands(plan)
        allowed.update({name: float("inf") for name in islands})
        passes.append(VerifyIntegerOnly(allowed))
    if precise_islands:
        passes.append(Float64Islands())
    if target is not None:
        passes.append(TensorizeDot(target, plan))
    return tvm.transform.Sequential(passes, name="tvmptq.Lower")


def lower(model_module, example_inputs, plan: QuantPlan, *, requantize: str = "int64", leave_float=(),
          islands=(), verify: bool = True, precise_islands: bool = True) -> tvm.IRModule:
    """The float model, imported at the shapes of ``example_inputs``, rewritten to the plan's
    integer program. ``requantize``: "int64" (pure Relax int64 ops) or "fixed_point_multiply"
    (TOPI q_multiply_shift_per_axis where provably exact). ``leave_float``: layer names not to
    lower (then pass verify=False: the module is not integer-only)."""
    mod = import_model(model_module, example_inputs)
    return lowering_passes(plan, requantize, leave_float, islands, verify, precise_islands)(mod)


def compile_integer(mod: tvm.IRModule, target="llvm", tensorize: bool = False):
    """Build ``mod`` and return ``run(*arrays) -> array`` (a tuple for several outputs).

    ``target``: a TVM target (or its string / dict), or a registry target name such as
    ``x86-host`` (targets/registry.toml). ``tensorize=True`` first applies
    ``tensorize_x86.TensorizeDot(target)``: linear layers and 1x1 convs as tensorized VNNI kernels
    when the registry target has VNNI; otherwise nothing changes and a warning names every layer
    and why. (It runs here, so only x86 kernels make sense; Arm ones run under qemu, targets.qemu.)

    The module has a static batch size; ``run`` takes any number of samples and feeds them in
    chunks of that size (the last chunk padded by repeating its last sample, then trimmed)."""
    named = None  # a registry target; plain TVM targets ("llvm", "llvm -mcpu=...", JSON) never read the registry
    if isinstance(target, str) and target.split(" ")[0] not in ("llvm", "c", "cuda") and not target.startswith("{"):
        import targets as tg
        named = tg.get(target) if tg.is_name(target) else None
    if tensorize:
        mod = TensorizeDot(named if named is not None else target)(mod)
    if named is not None:
        target = named.tvm_target()
    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    from targets.build import compile_module  # fused, as every CPU build of the project
    vm = relax.VirtualMachine(compile_module(mod, target), tvm.cpu())
    shapes = [tuple(int(d) for d in p.ty.shape) for p in mod["main"].params]
    dtypes = [str(p.ty.dtype) for p in mod["main"].params]
    batch = shapes[0][0]

    def run(*arrays):
        return run_batched(vm["main"], arrays, batch, dtypes, tvm.cpu())
    return run


def run_batched(func, arrays, batch: int, dtypes, device):
    """Call a static-batch compiled ``func`` on any number of samples: chunks of ``batch``, the last
    one padded by repeating its last sample, outputs trimmed and concatenated (a tuple for
    several outputs)."""
    n = len(arrays[0])
    outs = []
    for i in range(0, n, batch):
        chunk = [np.asarray(a[i:i + batch], dtype=dt) for a, dt in zip(arrays, dtypes)]
        short = batch - len(chunk[0])
        if short:
            chunk = [np.concatenate([c, np.repeat(c[-1:], short, axis=0)]) for c in chunk]
        res = func(*[tvm.runtime.tensor(np.ascontiguousarray(c), device) for c in chunk])
        res = [res] if hasattr(res, "numpy") else list(res)  # one tensor or a tuple of them
        outs.append([r.numpy()[:batch - short] for r in res])
    merged = [np.concatenate(parts) for parts in zip(*outs)]
    return merged[0] if len(merged) == 1 else tuple(merged)
