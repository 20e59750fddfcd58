"""Optional pass 7 (targets with an int8 dot-product instruction): each quantized linear layer and
conv becomes one tensorized kernel of targets.kernels.

After the lowering (QuantizeLayers, CancelQDQ) a linear layer (or conv) with a constant int8 weight
is the chain of Relax ops (integer_ops.requantize)

    acc = matmul(x, W^T) | conv2d(x, W) -> int32   x: uint8 or int8 activations (containers)
    [acc + bias (int32)]                           zero point folded into the bias
    astype int64, [+ bias (int64)], [* m], + 2^(k-1), >> k, [+ z_out], clip(lo, hi), astype u8/i8

``TensorizeDenseVNNI`` finds that chain (``dense_requant_pattern``, a ``tvm.relax.dpl`` pattern)
and replaces it by a single ``call_tir`` to a hand-scheduled kernel of targets.kernels.x86_vnni:
``dense_requant_vnni`` for a linear layer, ``conv1x1_requant_vnni`` for a 1x1, stride-1,
unpadded NCHW conv (the dense over pixels; pointwise convs are most of a MobileNet/EfficientNet's
multiply-adds). The weight is packed at compile time into the VNNI layout ``[N/16, K/4, 16, 4]``
(a constant argument, zero padded for N % 16, K % 4), the accumulation runs in ``vpdpbusd``
(u8 x s8), and the whole requantize (bias, multiplier, rounding, shift, zero point, clip, cast)
runs in the kernel's epilogue, right after each output tile. int8 activations are shifted to
uint8 (x + 128) inside the kernel and ``128 * rowsum(W)`` is subtracted from the per-channel bias
at compile time. Leading dimensions ([B, T, K] inputs) are flattened, and NCHW tensors viewed as
[B, C, H * W], with reshapes. The arithmetic is the chain's own, in int64, so the result is
bit-identical.

On CPU ISAs (``DotISA.channels_last``: VNNI, sdot, smmla) convs run channels last
(relay_passes/channels_last.py): a 1x1 conv is ``dense_requant`` on the ``[B*H*W, C]`` view of its
NHWC input, any other conv with groups=1 (a stem, 3x3 convs, strided 1x1s) is targets.kernels.im2col's rows
through the same dense kernel, a depthwise conv is targets.kernels.depthwise's NHWC kernel, and the
integer ops between them follow in NHWC, so a transpose is paid only where such a chain meets an
NCHW op (the pool, the input). Depthwise convs whose activations are the instruction's dtype, with
whole groups of ``lanes`` channels and no implicit padding, run their taps on the dot product too
(targets.kernels.depthwise.depthwise_requant_nhwc_dot, VNNI). The graph's NCHW bindings stay as views of the results; nothing
NCHW reads them but those ops. CUDA (dp4a) keeps NCHW.

The kernel PrimFunc carries ``tirx.is_scheduled`` (DLight and MetaSchedule's task extraction skip
it) and ``op_pattern`` = kOpaque (AnnotateTIROpPattern keeps an existing pattern, and FuseOps never
fuses an opaque call, so FuseTIR cannot merge it into an unscheduled function).

Which targets: a registry target (targets/registry.toml) whose capabilities include ``vnni`` and
``avx512`` (the kernel uses the 512-bit ``vpdpbusd``; ``avx_vnni`` alone is the 256-bit form).
Every integer kernel the pass does not rewrite is named in ``report`` with the reason, and a
warning lists them: other targets, convs other than 1x1 stride-1 where the ISA is not channels
last (k x k, strided; depthwise without a CPU kernel), dilated or grouped convs, activation x
activation matmuls the batch-matmul kernel does not take, chains in another form (requantize="fixed_point_multiply", a float branch after
the layer), and accumulators that could overflow int32 after the +128 shift.

Activation x activation matmuls (attention's ``Q K^T`` and ``P V``) followed by the same requantize
chain become targets.kernels.batch_matmul kernels on CPU ISAs of the generic form (VNNI, sdot; an
i8mm core runs them on sdot): both operands read as their 8-bit containers, the zero points
corrected exactly in the kernel, the keys read untransposed (attention.py). Those it does not take
stay with targets/cpu_reduction.py's schedule, with the reason in the report.

The pass is five files: pattern.py (the chain matched, the per-kernel report), analysis.py (a
matched chain -> the kernel's numbers, or the reason it cannot run), attention.py (the same for
activation x activation matmuls), rewrite.py (building the kernels and emitting their calls,
channels last on CPUs), passes.py (the tvm.transform passes).
"""
from .analysis import target_isa, vnni_target_reason
from .passes import TensorizeDenseVNNI, TensorizeDot, tensorize_for
from .pattern import (DEPTHWISE_DOT_INFIX, DEPTHWISE_PREFIX, KERNEL_PREFIX, KERNEL_PREFIXES, REPORT_ATTR,
                      TensorizeRecord, dense_requant_pattern, tensorize_report)
from .rewrite import CONV_TILE, build_kernel

__all__ = ["TensorizeDot", "TensorizeDenseVNNI", "tensorize_for", "tensorize_report", "TensorizeRecord",
           "dense_requant_pattern", "target_isa", "vnni_target_reason", "build_kernel", "CONV_TILE", "KERNEL_PREFIX",
           "KERNEL_PREFIXES", "REPORT_ATTR", "DEPTHWISE_PREFIX", "DEPTHWISE_DOT_INFIX"]
