"""Arm dotprod (``sdot``) kernels: the lowering's linear layers and convs tensorized for Arm
targets with the ``dotprod`` capability (convs channels last), cross-compiled for aarch64 and run under qemu-user, bit for
bit equal to the NumPy reference (uint8 activations through the -128 shift, int8 ones as they are).
Targets without dotprod (Cortex-A72) are left unchanged and say why. Needs `make arm-setup`."""
import shutil
import subprocess

import numpy as np
import pytest
import torch

import tvmptq
from tvmptq.reference import run_plan
from tvmptq.zoo import from_module

tvm = pytest.importorskip("tvm")
import relay_passes as rp  # noqa: E402
import targets  # noqa: E402
from targets import kernels as dot  # noqa: E402
from targets.kernels.arm_sdot import SDOT  # noqa: E402

from test_vnni_lowering import ConvNet, TwoLinears  # noqa: E402


def _arm_missing():
    from targets import qemu
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        return "aarch64-linux-gnu-gcc missing (make arm-setup)"
    return qemu.missing()


needs_arm = pytest.mark.skipif(_arm_missing() is not None, reason=str(_arm_missing()))
TARGET = "cortex-a76"  # Raspberry Pi 5: dotprod


def _model(kind, symmetric):
    torch.manual_seed(4)
    if kind == "convnet":
        x, net, batch = (torch.randn(10, 6, 7, 9) + 0.2).numpy(), ConvNet(), 2
    else:
        x, net, batch = (torch.randn(10, 6, 50) + 0.3).numpy(), TwoLinears(True), 2
    model = from_module(net.eval(), (torch.from_numpy(x[:1]),))
    qm = tvmptq.quantize(model, (x[:6],), tvmptq.make_config(8, 8, "minmax", symmetric=symmetric), progress=False)
    base = rp.lowering_passes(qm.plan)(rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(batch))))
    return x[6:], qm.plan, base, batch


def test_isa_table_picks_the_instruction_per_target():
    from relay_passes.tensorize import target_isa
    assert target_isa("cortex-a76")[0] is SDOT and target_isa("neoverse-n1")[0] is SDOT  # neoverse-v1: smmla
    isa, why = target_isa("cortex-a72")
    assert isa is None and "lacks the 'dotprod' capability of the sdot kernels" in why
    assert target_isa("x86-avx2")[0] is None  # x86 without VNNI
    assert dot.packed_shape(37, 50, SDOT.lanes) == (10, 13, 4, 4)
    w = np.arange(-60, 60, dtype=np.int8).reshape(6, 20)
    p = dot.pack_weight(w, 4)
    assert p[1, 2, 1, 3] == w[5, 11] and p[1, 0, 2, 0] == 0  # zero padded channels
    assert (dot.shift_of("uint8", SDOT), dot.shift_of("int8", SDOT)) == (-128, 0)


@pytest.mark.parametrize("kind", ["convnet", "linears"])
def test_a72_has_no_dotprod_and_nothing_changes(kind):
    _, plan, base, _ = _model(kind, False)
    t = rp.TensorizeDot("cortex-a72", plan, warn=False)
    mod = t(base)
    assert not any(r.tensorized for r in t.report) and len(mod.functions_items()) == len(base.functions_items())
    assert all("lacks the 'dotprod'" in r.reason for r in t.report if r.kind == "linear")


def check_program_under_qemu(kind, symmetric, target, instruction, tmp_path):
    """TensorizeDot for ``target`` puts the model's layers in ``instruction`` kernels (both linears;
    the ConvNet's four non-depthwise convs, channels last: two 1x1, a strided 1x1 and a 3x3 as
    im2col rows, its depthwise conv in the NHWC SIMD kernel); the exported aarch64 library, run
    under qemu-user, equals the NumPy reference bit for bit, and its disassembly holds the
    instruction."""
    from targets import qemu
    from targets.build import compile_module, export
    x, plan, base, batch = _model(kind, symmetric)
    t = targets.get(target)
    tensorize = rp.TensorizeDot(t, plan, warn=False)
    mod = tensorize(base)
    done = [r for r in tensorize.report if r.tensorized]
    assert len(done) == (4 if kind == "convnet" else 2) and all(r.kernel.startswith(f"{instruction}_") for r in done)
    act = "i8" if symmetric else "u8"
    assert all(f"_{act}_" in r.kernel for r in done)
    lib = tmp_path / "model.so"
    export(compile_module(mod, t.tvm_target()), lib, t)
    got = qemu.run_library(lib, [x.astype(np.float32)], batch)[0]
    assert np.array_equal(got, run_plan(plan, x))
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump:
        dis = subprocess.run([objdump, "-d", str(lib)], capture_output=True, text=True, check=True).stdout
        assert f"\t{instruction}\t" in dis


@needs_arm
@pytest.mark.parametrize("symmetric", [False, True], ids=["uint8-asym", "int8-sym"])
@pytest.mark.parametrize("kind", ["convnet", "linears"])
def test_sdot_program_is_bit_exact_under_qemu(kind, symmetric, tmp_path):
    check_program_under_qemu(kind, symmetric, TARGET, "sdot", tmp_path)
