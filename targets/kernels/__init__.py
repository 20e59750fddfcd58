"""Hand-scheduled int8 kernels: TE workloads with the plan's requantize in their epilogues and the
schedules that put them on each target's dot-product instruction.

* isa.py: the instructions as data (:class:`DotISA` rows, :func:`isas`, :func:`isa_for`);
  each ISA module registers its row: x86_vnni.py (``vpdpbusd``), arm_sdot.py (``sdot``),
  arm_i8mm.py (``smmla``), cuda_dp4a.py (``__dp4a``; GPU schedules).
* dense.py: the GEMM written once for every row (weight packing, the activation shift, dense and
  1x1-conv workloads, hand schedules); requant.py: the epilogue arithmetic (int64 rows and the
  exact high-half int32 form); loops.py: parallel/stack-limit helpers.
* batch_matmul.py: activation x activation matmuls (attention's QK^T and P V) on the same
  instructions, the second operand packed at run time, zero points corrected exactly.
* depthwise.py: depthwise convs (NCHW / NHWC SIMD kernels, NHWC taps on ``vpdpbusd``);
  im2col.py: the rows that run any other conv through the dense kernel.

This package imports every ISA module, so ``isas()`` here is the full table. The modules import only
TVM, NumPy and each other downwards (isa, loops, requant <- dense <- ISA modules); the Relax passes
(relay_passes/tensorize) call them, the kernels never import a pass.
"""
from . import arm_i8mm, arm_sdot, cuda_dp4a, x86_vnni  # noqa: F401 - each registers its DotISA row
from .dense import (conv1x1_requant, dense_requant, dense_te, pack_weight, packed_shape, schedule_conv1x1,
                    schedule_dense, shift_correction, shift_of, tile_sizes)
from .isa import DotISA, isa_for, isas, register_intrinsic, register_isa
from .loops import PARALLEL_MIN_ELEMENTS, PARALLEL_MIN_MACS, STACK_ALLOCA_BYTES, loop_extent, parallel_if_worth
from .requant import REQUANT_ROWS, REQUANT_ROWS_HI32, hi32_rows, requantize_int64, saturates

__all__ = ["DotISA", "isas", "isa_for", "register_isa", "register_intrinsic", "pack_weight", "packed_shape",
           "shift_of", "shift_correction", "dense_te", "dense_requant", "conv1x1_requant", "tile_sizes",
           "schedule_dense", "schedule_conv1x1", "hi32_rows", "saturates", "requantize_int64", "REQUANT_ROWS",
           "REQUANT_ROWS_HI32", "loop_extent", "parallel_if_worth", "PARALLEL_MIN_MACS", "PARALLEL_MIN_ELEMENTS",
           "STACK_ALLOCA_BYTES"]
