"""The tuning databases on disk: their layout (MetaSchedule's JSON database per target folder, the
resolved target it was tuned for, the seconds spent), the committed ones per CPU, which database a
target may use (its own, or one tuned on another CPU of the same architecture), and reading one
with every line checked (a truncated last line dropped, other damage a TuneDatabaseError)."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from tvmptq.errors import DataError

WORKLOADS, RECORDS, META = "database_workload.json", "database_tuning_record.json", "target.json"


class TuneDatabaseError(DataError):
    """A tuning database that cannot be read (exit code 3)."""


# Committed databases of the zoo: ``tuned/<cpu>/<target>-<model>-<variant>-b<batch>``, one folder per
# CPU they were measured on (a trial's time, and so which schedule wins, belongs to that CPU).
SHIPPED = Path(__file__).resolve().parent / "tuned"
SECONDS = "seconds.json"
REPO = Path(__file__).resolve().parent.parent


def shown(folder) -> str:
    """How a database folder is named in a reason that reaches a results file: relative to the
    repository when inside it, else its CPU folder and its own name (never this machine's absolute path)."""
    folder = Path(folder).resolve()
    return str(folder.relative_to(REPO) if folder.is_relative_to(REPO) else Path(folder.parent.name) / folder.name)


def target_cpu(tvm_target) -> str:
    """The CPU a database's measurements belong to: the target's LLVM ``mcpu`` ("generic" if unnamed)."""
    return json.loads(str(tvm_target)).get("mcpu") or "generic"


def _arch_key(target_json: str) -> tuple:
    d = json.loads(target_json)
    return d.get("kind"), d.get("mtriple")


def zoo_folder(root, target_name: str, model: str, variant: str, batch: int, tvm_target) -> Path:
    """Where the database of a zoo model's program for ``tvm_target`` lives under ``root`` (the
    benchmarks and scripts/tune_zoo.py tune into it): a machine with another CPU tunes its own
    folder next to the others instead of mixing measurements from two CPUs in one search."""
    return Path(root) / target_cpu(tvm_target) / f"{target_name}-{model}-{variant}-b{batch}".replace("/", "_")


def shipped_folder(target_name: str, model: str, variant: str, batch: int, tvm_target) -> Path:
    """The committed database of a zoo model's program tuned on exactly this target's CPU."""
    return zoo_folder(SHIPPED, target_name, model, variant, batch, tvm_target)


def transferable_database(root, target_name: str, model: str, variant: str, batch: int, tvm_target):
    """(folder, cpu) of the fullest database of the same program tuned on another CPU of the same
    architecture (same target kind and triple), or None.

    Why it is worth using: its schedules are valid TIR for this target and compute the same integers
    (targets/verify.py checked each on the CPU it was tuned on; the int8 dot kernels are not in it,
    they follow this target's own features). They are only not tuned for this CPU's timings, and an
    untuned CPU build is 10-100x slower than a tuned one. Callers say that they use it."""
    want = _arch_key(str(with_cores(tvm_target)))
    here = target_cpu(tvm_target)
    name = f"{target_name}-{model}-{variant}-b{batch}".replace("/", "_")
    found = []
    for folder in sorted(Path(root).glob(f"*/{name}")):
        try:
            have = _tuned_for(folder)
        except TuneDatabaseError:
            continue
        if have is None or not has_records(folder) or _arch_key(have) != want:
            continue
        cpu = json.loads(have).get("mcpu") or "generic"
        if cpu != here:
            found.append((_count_lines(folder / RECORDS), folder, cpu))
    if not found:
        return None
    _, folder, cpu = max(found, key=lambda f: f[0])
    return folder, cpu


def zoo_database(root, target_name: str, model: str, variant: str, batch: int, tvm_target):
    """The database a zoo model's program is compiled with when nothing is tuned now, chosen in one
    place for the CLI, the benchmarks and the compare report: ``(folder, cpu, None)`` with this
    target's own folder under ``root`` when it is usable, else the fullest one tuned on another CPU
    of the same architecture (``cpu`` names that CPU: callers say so), else ``(None, None, why)``."""
    folder = zoo_folder(root, target_name, model, variant, batch, tvm_target)
    why = usable_database(folder, tvm_target)
    if why is None:
        return folder, target_cpu(tvm_target), None
    other = transferable_database(root, target_name, model, variant, batch, tvm_target)
    return (other[0], other[1], None) if other is not None else (None, None, why)


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def usable_database(folder, tvm_target) -> str | None:
    """None when ``folder`` holds tuning records made for exactly ``tvm_target`` (cores included),
    else the reason it cannot be used."""
    folder = Path(folder)
    if not has_records(folder):
        return f"no tuning records in {shown(folder)}"
    want = str(with_cores(tvm_target))
    try:
        have = _tuned_for(folder)
    except TuneDatabaseError:
        have = None
    if have is None:
        return f"{shown(folder) + '/' + META} is missing or unreadable"
    return None if have == want else f"{shown(folder)} was tuned for {have}; this machine's target is {want}"


def has_records(folder) -> bool:
    path = Path(folder) / RECORDS
    return path.is_file() and path.stat().st_size > 0


def _tuned_for(folder: Path) -> str | None:
    """The TVM target (JSON) a database was made for; None when it does not say."""
    meta = folder / META
    if not meta.exists():
        return None
    try:
        return json.loads(meta.read_text())["target"]
    except (OSError, ValueError, KeyError, TypeError):
        raise TuneDatabaseError(f"corrupt tuning database {folder}: {META} is unreadable") from None


def default_root() -> Path:
    return Path(os.environ.get("TVMPTQ_TUNE_DB", Path.home() / ".cache" / "tvmptq" / "tune"))


def db_dir(root, target_name: str) -> Path:
    return Path(root) / target_name.replace("/", "_")


def with_cores(tvm_target, cores: int | None = None):
    """MetaSchedule needs "num-cores" on CPU targets: this machine's count unless the target has one."""
    import tvm
    d = json.loads(str(tvm_target))
    if d.get("kind") != "llvm" or "num-cores" in d:
        return tvm_target
    d = {k: v for k, v in d.items() if not k.startswith("feature.") and k not in ("keys", "tag")}
    d["num-cores"] = cores or len(os.sched_getaffinity(0))
    return tvm.target.Target(d)


def _check_lines(path: Path, what: str, check) -> None:
    """Every line must be JSON of the expected shape; a truncated last line is removed."""
    if not path.exists():
        return
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise TuneDatabaseError(f"cannot read tuning database {path}: {err}") from None
    lines = raw.split(b"\n")
    complete = raw.endswith(b"\n") or raw == b""
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            ok = check(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            ok = False
        if ok:
            continue
        if i == len(lines) - 1 and not complete:  # a write cut short by a kill: drop it
            warnings.warn(f"{path}: dropping a truncated last {what} (an interrupted run); the others are kept")
            path.write_bytes(b"\n".join(lines[:i]) + (b"\n" if i else b""))
            return
        raise TuneDatabaseError(f"corrupt tuning database {path}, line {i + 1}: not a valid {what}. Delete "
                                f"{path.parent} (or pass another --db) to tune again from scratch")


def _is_workload(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)


def _is_record(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) and isinstance(v[1], list) and len(v[1]) >= 3


def open_database(folder, tvm_target=None, create: bool = False):
    """MetaSchedule's JSONDatabase in ``folder``, checked first (TuneDatabaseError when corrupt, when
    tuning (``create``) into a database of another target, or when reading one of another
    architecture)."""
    from tvm.s_tir import meta_schedule as ms
    folder = Path(folder)
    if not folder.is_dir():
        if not create:
            raise TuneDatabaseError(f"no tuning database in {folder}: run `tvmptq tune` first")
        folder.mkdir(parents=True)
    _check_lines(folder / WORKLOADS, "workload entry", _is_workload)
    _check_lines(folder / RECORDS, "tuning record", _is_record)
    if tvm_target is not None:
        want, have = str(tvm_target), _tuned_for(folder)
        # Tuning (create) adds measurements, which only compare within one CPU; reading schedules
        # (apply) needs only the same architecture (transferable_database says why).
        if have is not None and have != want and (create or _arch_key(have) != _arch_key(want)):
            raise TuneDatabaseError(f"tuning database {folder} was made for target {have}, not {want}")
        if have is None and create:
            (folder / META).write_text(json.dumps({"target": want}, indent=2) + "\n")
    try:
        return ms.database.JSONDatabase(str(folder / WORKLOADS), str(folder / RECORDS), allow_missing=True)
    except Exception as err:
        msg = str(err).strip().splitlines()
        raise TuneDatabaseError(f"corrupt tuning database {folder}: {msg[-1] if msg else type(err).__name__}") from None



def _seconds(folder: Path) -> float:
    """Tuning time spent on this database over all runs (chunks may span sessions)."""
    try:
        return float(json.loads((folder / SECONDS).read_text())["tuning_seconds"])
    except FileNotFoundError:
        return 0.0
    except (OSError, ValueError, KeyError, TypeError):
        raise TuneDatabaseError(f"corrupt tuning database {folder}: {SECONDS} is unreadable") from None
