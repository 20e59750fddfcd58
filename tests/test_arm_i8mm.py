"""Arm i8mm (``smmla``) kernels: targets with the ``i8mm`` capability (Neoverse V1) get the lowering's
linear layers and 1x1 convs as ``smmla`` kernels (2x2 int32 tiles of 2x8 by 8x2 int8 products),
cross-compiled for aarch64 and run under qemu-user, bit for bit equal to the NumPy reference.
Needs `make arm-setup`."""
import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from relay_passes.tensorize import target_isa  # noqa: E402
from targets.kernels.arm_i8mm import SMMLA, pack_weight, packed_shape  # noqa: E402
from targets.kernels.arm_sdot import SDOT  # noqa: E402

from test_arm_int8 import check_program_under_qemu, needs_arm  # noqa: E402

TARGET = "neoverse-v1"  # dotprod + i8mm


def test_i8mm_targets_pick_smmla_and_the_others_sdot():
    assert target_isa("neoverse-v1")[0] is SMMLA
    assert target_isa("cortex-a76")[0] is SDOT and target_isa("neoverse-n1")[0] is SDOT
    assert packed_shape(37, 50) == (19, 7, 2, 8)
    w = np.arange(-60, 60, dtype=np.int8).reshape(5, 24)
    p = pack_weight(w)
    assert p.shape == (3, 3, 2, 8)
    assert p[1, 2, 1, 3] == w[3, 19] and p[2, 0, 1, 0] == 0 and p[2, 1, 0, 7] == w[4, 15]  # zero padded channel


@needs_arm
@pytest.mark.parametrize("symmetric", [False, True], ids=["uint8-asym", "int8-sym"])
@pytest.mark.parametrize("kind", ["convnet", "linears"])
def test_smmla_program_is_bit_exact_under_qemu(kind, symmetric, tmp_path):
    check_program_under_qemu(kind, symmetric, TARGET, "smmla", tmp_path)
