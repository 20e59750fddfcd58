"""Entry points: plan -> integer-only Relax module (targets.build.compile_integer compiles it)."""
from __future__ import annotations

import tvm

from tvmptq.quant.plan import QuantPlan

from .cancel_qdq import CancelQDQ
from .canonicalize import Canonicalize
from .errors import LoweringError
from .frontend import import_model
from .int_layernorm import IntegerLayerNorms
from .int_softmax import IntegerSoftmax
from .islands import FLOAT_BRANCH_OPS, Float64Islands, float_branch_key, plan_islands
from .lookup_tables import LookupTables
from .match import MatchPlanLayers
from .prelu import PReLUs
from .quantize_layers import QuantizeLayers
from .tensorize import TensorizeDot
from .verify import VerifyIntegerOnly


def lowering_passes(plan: QuantPlan, requantize: str = "int64", leave_float=(), islands=(),
                    verify: bool = True, precise_islands: bool = True, target=None,
                    probes=None) -> tvm.transform.Pass:
    """The lowering pipeline. ``precise_islands``: compute LayerNorm/softmax/GELU islands in
    float64 (see islands.Float64Islands) so they round like PyTorch's; off for speed. Declared
    float branches (QwT v1) are lowered as float64 islands and declared to the verifier with the
    plan's other islands (islands.plan_islands). ``target`` (a registry name or targets.Target):
    when given, the target-specific kernel passes run last (tensorize.TensorizeDot: linear
    layers and 1x1 convs as tensorized kernels where the target has VNNI or Arm dotprod; otherwise
    the module is unchanged and a warning names every layer left as it is, and why).
    ``probes`` (a probes.TensorProbes, for checking only): ``main`` also returns the probed
    integer values of the program; None (the default) adds no pass."""
    unknown = [f"{lp.name} ({lp.attrs['float_branch'].get('kind')}, features "
               f"{lp.attrs['float_branch'].get('features')})" for lp in plan.layers
               if lp.attrs.get("float_branch") and float_branch_key(lp) not in FLOAT_BRANCH_OPS]
    if unknown:
        raise LoweringError(f"plan has float branches the Relax lowering does not know at {', '.join(unknown)}: "
                            f"it lowers {', '.join(f'{k}/{f}' for k, f in FLOAT_BRANCH_OPS)} (a qwt_v1 plan "
                            "without 'features' predates the lowering: fit it again)")
    passes = [Canonicalize(), LookupTables(plan), PReLUs(plan), MatchPlanLayers(plan)]
    passes += [probes.mark()] if probes is not None else []
    for p in (QuantizeLayers(plan, requantize, leave_float), IntegerLayerNorms(plan), IntegerSoftmax(plan)):
        passes.append(p)
        if probes is not None:  # after each integer pass: values a later pass leaves without users
            passes.append(probes.expose(last=isinstance(p, IntegerSoftmax)))
    passes.append(CancelQDQ())
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
