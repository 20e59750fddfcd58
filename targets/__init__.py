"""Named compilation targets for tvmptq integer programs: a registry kept as data.

    import targets
    t = targets.get("cortex-a72")          # a Target: TVM target dict, cross compiler, capabilities, RPC key
    t.tvm_target()                         # the tvm.target.Target (host CPU resolved, never "native")
    targets.names()                        # built-in names plus the user's

The built-in table is ``registry.toml`` beside this file. Users add or replace targets with a TOML
file of the same form, found (in this order, later files win) at ``~/.config/tvmptq/targets.toml``,
``$TVMPTQ_TARGETS`` (one or more paths separated by ``:``) and any file passed explicitly
(``tvmptq ... --targets-file``). ``@host`` in a target dict stands for this machine's real CPU name,
read from LLVM and corrected with /proc/cpuinfo flags (see :func:`host_cpu`).

Submodules: ``targets.kernels`` (the hand-scheduled int8 kernels, one module per dot-product ISA),
``targets.build`` (compile/export/cross-compile), ``targets.qemu`` (aarch64 under qemu-user),
``targets.tune`` and ``targets.tuning_db`` (MetaSchedule with an on-disk database), ``targets.verify``
(tuned schedules checked), ``targets.rpc`` and ``targets.profile`` (local and RPC-tracker latency),
``targets.cuda`` (nvcc validation of generated CUDA source), ``targets.compare`` / ``targets.speed``
(cross-target and peer reports). This file is data only: it imports none of them.
"""
from __future__ import annotations

import functools
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tvmptq.errors import ConfigError, DataError

REGISTRY_FILE = Path(__file__).with_name("registry.toml")
USER_FILE = Path.home() / ".config" / "tvmptq" / "targets.toml"
KNOWN_CAPABILITIES = {"avx2", "fma", "avx512", "vnni", "amx", "neon", "dotprod", "i8mm", "sve", "dp4a", "tensorcore",
                      "int8", "int16"}
_FIELDS = {"tvm", "host", "arch", "cross_cc", "capabilities", "rpc_key", "qemu", "note", "npu"}


class TargetError(ConfigError):
    """An unknown target name or a malformed target entry (exit code 2)."""


class TargetFileError(DataError):
    """A user targets file that cannot be read or parsed (exit code 3)."""


@dataclass(frozen=True)
class Target:
    name: str
    tvm: dict
    arch: str
    host: dict | None = None
    cross_cc: str = ""
    capabilities: tuple = ()
    rpc_key: str = ""
    qemu: str = ""
    note: str = ""
    source: str = "built-in"
    extra: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.tvm.get("kind", "llvm")

    @property
    def is_npu(self) -> bool:
        """An NPU compiled by its vendor's compiler (``npu`` table: Vela's settings), not by TVM."""
        return "npu" in self.extra

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def cross(self) -> bool:
        """True when the library is linked for another machine than this one."""
        return bool(self.cross_cc)

    def resolved(self) -> dict:
        """The TVM target dict with ``@host`` replaced by the real CPU name (``host`` nested in)."""
        d = _resolve(self.tvm)
        if self.host is not None:
            d["host"] = _resolve(self.host)
        return d

    def tvm_target(self):
        import tvm
        d = self.resolved()
        host = d.pop("host", None)
        try:
            return tvm.target.Target(d, host=host) if host else tvm.target.Target(d)
        except Exception as err:
            msg = str(err).strip().splitlines()
            raise TargetError(f"target {self.name!r} ({self.source}) is not a valid TVM target: "
                              f"{msg[-1] if msg else type(err).__name__}") from None

    def caps(self) -> tuple:
        if "@host" in self.capabilities:
            return tuple(sorted(set(c for c in self.capabilities if c != "@host") | set(host_capabilities())))
        return tuple(self.capabilities)

    def describe(self) -> dict:
        return {"name": self.name, "arch": self.arch, "tvm": self.resolved(), "cross_cc": self.cross_cc,
                "capabilities": list(self.caps()), "rpc_key": self.rpc_key, "qemu": self.qemu,
                "note": self.note, "source": self.source}


def _resolve(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if v == "@host":
            v = host_cpu()
        out[k] = list(v) if isinstance(v, (list, tuple)) else v
    return out


# ---------------------------------------------------------------------------------------- host CPU
# LLVM names whose feature sets we can trust the cpuinfo flags to confirm, most capable first.
# LLVM's own host detection can be wrong under virtualization (a Sapphire Rapids VM reports
# "rocketlake", which has no AMX), so the flags decide when they prove more than LLVM's name.
_X86_BY_FLAGS = [
    ({"amx_int8", "amx_tile", "avx512_vnni", "avx512bw"}, "sapphirerapids"),
    ({"avx512_vnni", "avx512_vbmi2", "avx512bw"}, "icelake-server"),
    ({"avx512_vnni", "avx512bw"}, "cascadelake"),
    ({"avx512f", "avx512bw", "avx512vl"}, "skylake-avx512"),
    ({"avx2", "fma", "bmi2"}, "haswell"),
    ({"sse4_2", "popcnt"}, "x86-64-v2"),
]
_LLVM_HAS = {"sapphirerapids": {"amx_tile", "avx512_vnni"}, "graniterapids": {"amx_tile", "avx512_vnni"},
             "emeraldrapids": {"amx_tile", "avx512_vnni"}, "rocketlake": {"avx512_vnni"},
             "icelake-server": {"avx512_vnni"}, "icelake-client": {"avx512_vnni"}, "tigerlake": {"avx512_vnni"},
             "cascadelake": {"avx512_vnni"}, "cooperlake": {"avx512_vnni"}, "znver4": {"avx512_vnni"},
             "znver5": {"avx512_vnni"}}


def _cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    return set(m.group(1).split()) if m else set()


@functools.lru_cache(maxsize=None)
def host_cpu() -> str:
    """This machine's CPU as an LLVM name, never "native" or "generic".

    ``$TVMPTQ_HOST_CPU`` overrides. Otherwise LLVM's host CPU name (the one ``llc --version``
    prints), replaced by the most capable name that /proc/cpuinfo's flags prove when LLVM's name
    lacks AMX or VNNI that the flags show (virtual machines often hide the real model)."""
    forced = os.environ.get("TVMPTQ_HOST_CPU")
    if forced:
        return forced
    name = ""
    try:
        import tvm
        name = str(tvm.target.codegen.llvm_get_system_cpu())
    except Exception:
        pass
    flags = _cpu_flags()
    best = next((cpu for need, cpu in _X86_BY_FLAGS if need <= flags), "")
    if not name or name in ("generic", "native"):
        return best or "x86-64"
    has = _LLVM_HAS.get(name, set())
    if "amx_tile" in flags and "amx_tile" not in has and best == "sapphirerapids":
        return best
    if "avx512_vnni" in flags and "avx512_vnni" not in has and best in ("icelake-server", "cascadelake"):
        return best
    return name


def host_capabilities() -> tuple:
    flags = _cpu_flags()
    caps = {"avx2": "avx2" in flags, "fma": "fma" in flags, "avx512": "avx512f" in flags,
            "vnni": "avx512_vnni" in flags or "avx_vnni" in flags, "amx": "amx_int8" in flags}
    return tuple(sorted(k for k, v in caps.items() if v))


# ---------------------------------------------------------------------------------------- loading
def _entry(name: str, raw, source: str) -> Target:
    if not isinstance(raw, dict):
        raise TargetError(f"target {name!r} in {source} must be a table, got {type(raw).__name__}")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise TargetError(f"target {name!r} in {source} has unknown field(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(_FIELDS))}")
    tvm_dict = raw.get("tvm")
    if not isinstance(tvm_dict, dict) or "kind" not in tvm_dict:
        raise TargetError(f"target {name!r} in {source} needs tvm = {{ kind = ... }} (a TVM target dict)")
    if tvm_dict.get("mcpu") == "native" or (raw.get("host") or {}).get("mcpu") == "native":
        raise TargetError(f"target {name!r} in {source}: mcpu \"native\" silently becomes \"generic\" in TVM 0.27; "
                          "use a real CPU name or \"@host\"")
    caps = raw.get("capabilities", [])
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise TargetError(f"target {name!r} in {source}: capabilities must be a list of strings")
    arch = raw.get("arch") or ("cuda" if tvm_dict["kind"] == "cuda" else
                               "aarch64" if "aarch64" in str(tvm_dict.get("mtriple", "")) else "x86_64")
    return Target(name=name, tvm=dict(tvm_dict), arch=arch, host=raw.get("host"), cross_cc=raw.get("cross_cc", ""),
                  capabilities=tuple(caps), rpc_key=raw.get("rpc_key", name), qemu=raw.get("qemu", ""),
                  note=raw.get("note", ""), source=source,
                  extra={"npu": dict(raw["npu"])} if "npu" in raw else {})


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise TargetFileError(f"targets file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise TargetFileError(f"cannot read targets file {path}: {err}") from None


def user_files(extra=()) -> list[Path]:
    files = [USER_FILE] if USER_FILE.is_file() else []
    env = os.environ.get("TVMPTQ_TARGETS", "")
    files += [Path(p) for p in env.split(":") if p]
    files += [Path(p) for p in extra if p]
    return files


def load(extra_files=()) -> dict[str, Target]:
    """Built-in targets, then the user's (later files replace earlier entries of the same name)."""
    table = {name: _entry(name, raw, "built-in") for name, raw in _read(REGISTRY_FILE).items()}
    for path in user_files(extra_files):
        for name, raw in _read(path).items():
            table[name] = _entry(name, raw, str(path))
    return table


def names(extra_files=()) -> list[str]:
    return list(load(extra_files))


def get(name: str, extra_files=()) -> Target:
    table = load(extra_files)
    if name not in table:
        close = [n for n in table if n.split("-")[0] in name or name in n]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TargetError(f"unknown target {name!r}{hint}; known targets: {', '.join(table)}. "
                          "Add your own in a targets file (see `tvmptq targets --help`).")
    return table[name]


def is_name(spec: str, extra_files=()) -> bool:
    return spec in load(extra_files)


def _machine() -> str:
    import platform
    m = platform.machine()
    return {"arm64": "aarch64", "AMD64": "x86_64"}.get(m, m)


def default_target(extra_files=()) -> tuple[str, str]:
    """(target, why): what ``tvmptq compile``/``tune`` and ``compile_artifact`` build for when no
    target is named. On x86: ``x86-host`` (this CPU, resolved by :func:`host_cpu`, with its int8
    kernels). Elsewhere: the registry entry for this machine, i.e. a target of this architecture
    whose CPU is LLVM's host CPU name; plain ``llvm`` (generic, said so) when none is."""
    arch = _machine()
    if arch == "x86_64":
        caps = ",".join(host_capabilities()) or "none"
        return "x86-host", f"this {arch} machine: {host_cpu()}, int8 capabilities {caps}"
    cpu = ""
    try:
        import tvm
        cpu = str(tvm.target.codegen.llvm_get_system_cpu())
    except Exception:  # no LLVM host detection: fall through to the generic build
        pass
    for t in load(extra_files).values():
        if t.arch == arch and t.kind == "llvm" and cpu and t.resolved().get("mcpu") == cpu:
            return t.name, f"this {arch} machine: {cpu} ({', '.join(t.caps()) or 'no int8 extensions'})"
    return "llvm", (f"this {arch} machine ({cpu or 'CPU unknown to LLVM'}) has no entry in the target registry: "
                    "generic llvm build; add one in a targets file for its int8 kernels")


def format_table(table: dict[str, Target]) -> str:
    rows = [("name", "arch", "TVM target", "cross compiler", "capabilities", "rpc key", "source")]
    for t in table.values():
        d = t.resolved()
        host = d.pop("host", None)
        desc = ", ".join(f"{k}={''.join(v) if isinstance(v, list) else v}" for k, v in d.items())
        if host:
            desc += f" (host {host.get('mtriple', 'llvm')} {host.get('mcpu', '')})".rstrip()
        rows.append((t.name, t.arch, desc, t.cross_cc or "-", ",".join(t.caps()) or "-", t.rpc_key,
                     "built-in" if t.source == "built-in" else "user"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


__all__ = ["Target", "TargetError", "TargetFileError", "load", "get", "names", "is_name", "host_cpu", "default_target",
           "host_capabilities", "format_table", "REGISTRY_FILE", "USER_FILE"]
