"""Arm Ethos-U NPUs through Arm's own compiler, Vela (``ethos-u-vela``).

The NPU targets are rows of ``targets/registry.toml`` with an ``npu`` table (accelerator config,
system config and memory mode of Vela's ``Arm/vela.ini``). :func:`compile_vela` runs Vela on a
fully-integer TFLite file and reads its estimates from the summary CSV Vela writes: cycles,
inference time at the configured clock, SRAM/DRAM/flash traffic, and the operators it leaves on the
CPU, by name (from its ``--show-cpu-operations`` listing). Every time and cycle count is Vela's
performance-model *estimate*, never a measurement.
"""
from __future__ import annotations

import csv
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tvmptq.errors import ModelError

import targets


class VelaError(ModelError):
    """Vela failed to compile a model (its message is quoted)."""


def npu_targets() -> list:
    """The NPU rows of the registry, in registry order."""
    return [t for t in targets.load().values() if t.is_npu]


@dataclass(frozen=True)
class VelaEstimate:
    target: str
    accelerator: str
    system_config: str
    memory_mode: str
    core_clock_hz: float
    cycles_npu: int
    cycles_total: int
    inference_time_s: float          # Vela's estimate at core_clock_hz
    sram_bytes: int
    dram_bytes: int
    off_chip_flash_bytes: int
    weights_bytes: int               # Vela-encoded weights
    npu_ops: int
    cpu_ops: tuple[str, ...]         # "TYPE = tensor name" of every op left on the CPU
    summary_csv: str
    optimized_tflite: str
    per_layer_csv: str = ""          # Vela's per-layer estimates (--verbose-performance)

    @property
    def estimated_ms(self) -> float:
        return self.inference_time_s * 1e3

    def as_dict(self) -> dict:
        return asdict(self)


def vela_executable() -> str:
    exe = Path(sys.executable).with_name("vela")
    return str(exe) if exe.exists() else "vela"


def compile_vela(tflite_path, target, out_dir, timeout: float = 900) -> VelaEstimate:
    """Compile ``tflite_path`` for an NPU target (a registry :class:`targets.Target` or its name)."""
    t = targets.get(target) if isinstance(target, str) else target
    if not t.is_npu:
        raise targets.TargetError(f"target {t.name!r} is not an NPU target (no npu table)")
    npu = t.extra["npu"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [vela_executable(), str(tflite_path), "--accelerator-config", npu["accelerator"],
           "--config", npu.get("config", "Arm/vela.ini"), "--system-config", npu["system_config"],
           "--memory-mode", npu["memory_mode"], "--output-dir", str(out_dir), "--show-cpu-operations",
           "--verbose-performance"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise VelaError("Vela is not installed (pip install --no-deps ethos-u-vela, pinned in "
                        "requirements.lock)") from None
    (out_dir / "vela_stdout.txt").write_text(proc.stdout + proc.stderr)
    stem = Path(tflite_path).stem
    summary = out_dir / f"{stem}_summary_{npu['system_config']}.csv"
    if proc.returncode != 0 or not summary.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise VelaError(f"Vela failed on {tflite_path} for {t.name} (exit {proc.returncode}):\n{tail}")
    with open(summary) as f:
        row = next(csv.DictReader(f))
    cpu = tuple(m.group(1) for m in re.finditer(r"^\s*CPU: (.+?)(?: \(outputs .*)?$", proc.stdout, re.M))
    npu_ops = len(re.findall(r"^\s*NPU: ", proc.stdout, re.M))
    num = lambda k: float(row.get(k) or 0)
    return VelaEstimate(
        t.name, npu["accelerator"], npu["system_config"], npu["memory_mode"], num("core_clock"),
        int(num("cycles_npu")), int(num("cycles_total")), num("inference_time"),
        int(num("sram_total_bytes")), int(num("dram_total_bytes")), int(num("off_chip_flash_total_bytes")),
        int(num("total_npu_encoded_weights")), npu_ops, cpu, str(summary),
        str(out_dir / f"{stem}_vela.tflite"), str(out_dir / f"{stem}_per-layer.csv"))
