"""Loop helpers shared by the hand-scheduled kernels: when a loop nest is worth a parallel launch,
and the stack limit an accumulator tile must stay under."""
from __future__ import annotations

# TVM puts a buffer on the stack only below this many bytes (tvm/runtime/device_api.h kMaxStackAlloca);
# a larger one inside a parallel loop becomes a TVMBackendAllocWorkspace/FreeWorkspace pair per
# iteration. The int32 accumulator tile is such a buffer: at exactly 1024 bytes (8 x 32 lanes) the
# EfficientNet-Lite0 pointwise kernels ran 1.5-2x slower than at 896 (7 x 32). tile_sizes keeps under it.
STACK_ALLOCA_BYTES = 1024
# Below these a kernel runs on the calling thread: a parallel launch costs microseconds (tens when
# the other cores are busy), more than a small layer's work. Measured on digits (8 x 8 maps, every
# layer a kernel), 2 threads in a process that had run PyTorch: 0.19 ms with every kernel
# parallel, against 0.05 ms on one thread.
PARALLEL_MIN_MACS = 1 << 20       # multiply-adds of a compute kernel
PARALLEL_MIN_ELEMENTS = 1 << 16   # elements a data-movement stage writes


def loop_extent(sch, loops) -> int:
    """Iterations of a loop nest (its work, for :func:`parallel_if_worth`)."""
    n = 1
    for loop in loops:
        n *= int(sch.get(loop).extent)
    return n


def parallel_if_worth(sch, loop, work: int, minimum: int = PARALLEL_MIN_MACS) -> None:
    """``sch.parallel(loop)`` when ``work`` reaches ``minimum`` (see PARALLEL_MIN_MACS)."""
    if work >= minimum:
        sch.parallel(loop)



def _divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)




def _ceil(n: int, m: int) -> int:
    return -(-n // m) * m
