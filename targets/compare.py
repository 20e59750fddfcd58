"""One model across several targets and quantization variants: a markdown report with a table and a
bar chart (``tvmptq compare``; ``scripts/bench_targets.py`` writes results/targets.md with it).

Per model and variant (FP32, int8 = W8A8 plan lowered to the integer-only program; on x86 targets
with VNNI with the tensorized kernels of relay_passes.tensorize, as ``tvmptq compile`` builds it):
  * x86 targets: latency here (median and IQR after warm-up), untuned and, with ``trials`` > 0,
    MetaSchedule-tuned (database under ``<work>/tune``, reused on the next run);
  * aarch64 targets: cross-compiled, run under qemu-user with the aarch64 TVM wheel, outputs
    compared with the x86 run (bit-exact expected for int8), guest instructions per call (a proxy,
    never a latency);
  * CUDA targets: built, the generated CUDA source compiled with nvcc for the arch; latency "not
    measured" without a GPU.
"""
from __future__ import annotations

import json
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvmptq.errors import ConfigError

from .npu.compare_rows import cross_target_chart, npu_section


def _log(msg):
    print(msg, flush=True)


def _plan(model, set_name, calib_samples, integer_islands=(), tensor_bits=None):
    import tvmptq
    calib = tuple(a[:calib_samples] for a in tvmptq.get_set(set_name).calibration())
    config = tvmptq.make_config(8, 8, integer_islands=integer_islands, tensor_bits=tensor_bits)
    return tvmptq.quantize(model, calib, config, progress=False).plan


def _modules(model, plan, batch):
    import relay_passes as rp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        fp32 = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(batch)))
        int8 = rp.lower(model.build(), model.example_inputs(batch), plan)
    return {"fp32": fp32, "int8": int8}


def _inputs(mod, xs):
    """One array per parameter of ``main`` (a model may take several, e.g. MiniLM's ids and mask)."""
    params = mod["main"].params
    if len(xs) < len(params):
        raise ConfigError(f"the module takes {len(params)} inputs, the evaluation set gives {len(xs)}")
    return [np.ascontiguousarray(x[: int(p.ty.shape[0])]).astype(str(p.ty.dtype)) for p, x in zip(params, xs)]


def _for_target(mods, var, t, plan):
    """The variant's module as ``tvmptq compile`` builds it for ``t``: int8 on a target with a
    dot-product instruction (x86 VNNI, Arm dotprod, CUDA dp4a) gets the tensorized kernels
    (relay_passes.tensorize.TensorizeDot); returns (module, kernels note)."""
    mod = mods[var]
    if var != "int8" or t.arch not in ("x86_64", "aarch64", "cuda"):
        return mod, ""
    from relay_passes.tensorize import TensorizeDot, target_isa
    isa, _ = target_isa(t)
    if isa is None:
        return mod, "no dot-product kernels"
    tensorize = TensorizeDot(t, plan, warn=False)
    mod = tensorize(mod)
    done = sum(r.tensorized for r in tensorize.report)
    return mod, f"{isa.name} {done}/{len(tensorize.report)}"


@dataclass(frozen=True)
class Prepared:
    """A zoo model made ready for a target's batch-1 int8 build (:func:`prepare_batch1`)."""
    model: object
    data: object        # its protocol set (tvmptq.get_set)
    plan: object        # the W8A8 plan
    mods: dict          # {"fp32", "int8"}: the Relax modules at batch 1
    tensorized: object  # mods["int8"] as ``tvmptq compile`` builds it for the target (_for_target)
    kernels: str        # _for_target's note on the dot-product kernels
    evaluation: list    # the protocol set's evaluation arrays
    xs: list            # batch-1 inputs, one per parameter of ``main``
    inputs: Path        # xs saved as in0, in1, ... (the inputs of targets.speed's workers)

    @property
    def params(self):
        return self.mods["fp32"]["main"].params

    def samples(self, n: int) -> list[list[np.ndarray]]:
        """The first ``n`` evaluation samples, each as batch-1 inputs in the parameters' dtypes."""
        return [[np.ascontiguousarray(a[j:j + 1]).astype(str(p.ty.dtype)) for a, p in zip(self.evaluation, self.params)]
                for j in range(n)]


def zoo_plan(name: str, calib_samples: int, integer_islands=(), tensor_bits=None):
    """(model, its W8A8 plan on the first ``calib_samples`` calibration samples of its protocol set);
    ``integer_islands``: QuantConfig.integer_islands; ``tensor_bits``: QuantConfig.tensor_bits
    (wide tensors or groups, e.g. tvmptq.quant.tensor_groups.PRESETS["res_ln_proj12"])."""
    import tvmptq
    from tvmptq.eval.sets import DEFAULT_SET
    model = tvmptq.load(name)
    return model, _plan(model, DEFAULT_SET[name], calib_samples, integer_islands, tensor_bits)


def prepare_batch1(name: str, calib_samples: int, work, target, planned=None, integer_islands=(),
                   tensor_bits=None) -> Prepared:
    """Plan, batch-1 Relax modules and the int8 module tensorized for ``target`` (a targets.Target)
    of zoo model ``name``, with its batch-1 evaluation inputs saved as ``work/inputs.npz``.
    ``planned``: the (model, plan) of :func:`zoo_plan` when the caller needed the plan first."""
    import tvmptq
    from tvmptq.eval.sets import DEFAULT_SET
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    model, plan = planned or zoo_plan(name, calib_samples, integer_islands, tensor_bits)
    data = tvmptq.get_set(DEFAULT_SET[name])
    mods = _modules(model, plan, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the layers left as they are: in the callers' reports
        tens, kernels = _for_target(mods, "int8", target, plan)
    evaluation = [np.asarray(a) for a in data.evaluation()]
    xs = _inputs(mods["fp32"], [a[:1] for a in evaluation])
    np.savez(work / "inputs.npz", **{f"in{i}": x for i, x in enumerate(xs)})
    return Prepared(model, data, plan, mods, tens, kernels, evaluation, xs, work / "inputs.npz")


def _x86_latency(ex, args, repeat, number, warmup):
    import tvm
    from tvm import relax

    from .profile import _measure
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    targs = [tvm.runtime.tensor(a, dev) for a in args]
    out = vm["main"](*targs)
    out = out if hasattr(out, "numpy") else out[0]
    return _measure(vm, dev, targs, repeat, number, warmup), out.numpy()


def run_compare(models, target_names, work, trials=0, chunk=8, batch=1, calib_samples=64, repeat=20, number=5,
                warmup=3, variants=("fp32", "int8"), out_md=None, log=_log, db_root=None, cover=0,
                budgets=None, tune_first=None, npu_wbits=(8, 4)) -> dict:
    """``db_root``: where the tuning databases live (default ``work/tune``; the benchmark uses the
    committed ``targets/tuned``, so tuning done once, in chunks over several runs, is kept).
    ``budgets``: {model: (trials, cover, chunk)} overriding ``trials``/``cover``/``chunk`` per model
    (targets.tune.ZOO_BUDGETS, the budgets the committed databases were tuned with).
    ``tune_first``: top the databases up to the budget before timing (default: when ``trials`` > 0
    or ``budgets`` are given); False times what the databases hold, and where none was tuned on this
    CPU, the one tuned on another CPU of the same architecture (the row says which).
    NPU targets (registry rows with an ``npu`` table) get targets.npu.compare_rows rows: Vela's
    estimates at each of ``npu_wbits`` (W8A8, W4A8), labelled as estimates."""
    import tvm

    import targets
    import tvmptq
    from tvmptq.eval.sets import DEFAULT_SET

    from . import cuda, qemu
    from .build import compile_module, export

    if tune_first is None:
        tune_first = trials > 0 or bool(budgets)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    tlist = [targets.get(n) for n in target_names]
    npus, tlist = [t for t in tlist if t.is_npu], [t for t in tlist if not t.is_npu]  # NPUs: Vela, not TVM
    rows, t_start = [], time.perf_counter()
    for name in models:
        model = tvmptq.load(name)
        set_name = DEFAULT_SET.get(name)
        if set_name is None:
            raise ConfigError(f"model {name!r} has no protocol set to calibrate on")
        t0 = time.perf_counter()
        plan = _plan(model, set_name, calib_samples)
        mods = _modules(model, plan, batch)
        xs = [np.asarray(a[:batch]) for a in tvmptq.get_set(set_name).evaluation()]
        m_trials, m_cover, m_chunk = (budgets or {}).get(name, (trials, cover, chunk))
        log(f"{name}: plan and modules in {time.perf_counter() - t0:.0f} s")
        reference = {}
        for t in tlist:
            for var in variants:
                mod, kernels = _for_target(mods, var, t, plan)
                args = _inputs(mod, xs)
                row = {"model": name, "variant": var, "target": t.name, "arch": t.arch, "batch": batch}
                if kernels:
                    row["int8_kernels"] = kernels
                T = t.tvm_target()
                t0 = time.perf_counter()
                if t.arch == "cuda":
                    ex = compile_module(mod, T)
                    src = cuda.cuda_source(ex)
                    f = work / f"{name}_{var}_{t.name}.cu"
                    f.write_text(src or "")
                    if cuda.nvcc_path() is None:
                        row["nvcc"] = "nvcc missing"
                    else:
                        r = cuda.validate(f, str(T.attrs["arch"]))
                        row["nvcc"] = f"ok ({r['cubin_bytes']} B cubin)"
                    row["latency"] = "not measured (no GPU)"
                elif t.arch == platform.machine() or (t.arch == "x86_64" and platform.machine() == "x86_64"):
                    ex = compile_module(mod, T)
                    stats, out = _x86_latency(ex, args, repeat, number, warmup)
                    reference.setdefault(var, out)
                    row["untuned_ms"], row["untuned_iqr_ms"] = stats["median_ms"], stats["iqr_ms"]
                    folder = _database(mod, db_root or work / "tune", t.name, name, var, batch, T, row,
                                       (m_trials, m_cover, m_chunk) if (m_trials > 0 or budgets) else None,
                                       tune_first, log)
                    if folder is not None:
                        from .tune import apply_database
                        stats, out_t = _x86_latency(apply_database(mod, T, folder), args, repeat, number, warmup)
                        row["tuned_ms"], row["tuned_iqr_ms"] = stats["median_ms"], stats["iqr_ms"]
                        row["tuned_same_output"] = bool(np.array_equal(out_t, out)) if var == "int8" else \
                            float(np.max(np.abs(out_t - out)))
                elif t.arch == "aarch64":
                    ex = compile_module(mod, T)
                    lib = work / f"{name}_{var}_{t.name}.so"
                    export(ex, lib, t)
                    outs = qemu.run_library(lib, args, batch)
                    ref = reference.get(var)
                    if ref is not None:
                        row["bit_exact_vs_x86"] = bool(np.array_equal(outs[0], ref))
                        row["max_abs_diff_vs_x86"] = float(np.max(np.abs(outs[0].astype(np.float64) - ref)))
                    ic = qemu.instruction_count(lib, args, batch, calls=20)
                    row["guest_minsns_per_call"] = ic["guest_insns_per_call"] / 1e6
                row["seconds"] = time.perf_counter() - t0
                log(f"  {name} {var} {t.name}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                           for k, v in row.items() if k not in ("model", "variant",
                                                                                                "target", "arch")))
                rows.append(row)
        if npus:
            from .npu.compare_rows import npu_rows
            rows += npu_rows(model, plan if "int8" in variants else None, set_name, npus, work / "npu",
                             calib_samples, npu_wbits, log=log)
    budget = {r["model"]: r["budget"] for r in rows if "budget" in r}
    result = {"rows": rows, "host_cpu": targets.host_cpu(), "tvm": tvm.__version__, "trials": trials, "budget": budget,
              "tuned_now": bool(tune_first), "seconds": time.perf_counter() - t_start}
    if out_md:
        write_report(result, Path(out_md))
    return result


def _database(mod, root, target_name, model, variant, batch, T, row, budget, tune_first, log):
    """The database folder a tuned x86 row is timed with (None: no tuned row). ``budget``: the
    model's (trials, cover, chunk), or None. With ``tune_first`` this CPU's folder is topped up to
    it first; then tuning_db.zoo_database chooses (``row["tuned_on"]`` names another CPU's)."""
    from .tune import database_summary, tune
    from .tuning_db import shown, target_cpu, zoo_database, zoo_folder
    if budget is not None:
        trials, cover, chunk = budget
        if trials <= 0:
            return None
        row["budget"] = f"{trials} (cover {cover}, chunk {chunk})"
        if tune_first:
            tune(mod, T, zoo_folder(root, target_name, model, variant, batch, T), trials, chunk, cover=cover, log=log)
    folder, cpu, why = zoo_database(root, target_name, model, variant, batch, T)
    if folder is None:
        log(f"  {model} {variant}: no tuning database ({why})")
        return None
    if cpu != target_cpu(T):
        row["tuned_on"] = cpu
        log(f"  {model} {variant}: schedules tuned on {cpu} ({shown(folder)}), applied on {target_cpu(T)}")
    summary = database_summary(folder)
    row["trials"], row["tuning_s"] = summary["trials_in_db"], summary["tuning_seconds_total"]
    row["database"] = shown(folder)
    return folder


def _variant(row) -> str:
    """"int8 (vnni 33/50)": the variant and, for int8, the dot-product kernels and the share of layers in them."""
    return f"{row['variant']} ({row['int8_kernels']})" if row.get("int8_kernels") else row["variant"]


def _fmt(v, spec=".3f"):
    return "-" if v is None else (format(v, spec) if isinstance(v, float) else str(v))


def write_report(result: dict, out_md: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    chart = out_md.with_suffix(".png")
    lines = ["# Targets: latency, bit-exactness, nvcc validation and Ethos-U estimates\n",
             f"TVM {result['tvm']}, x86-host = `{result['host_cpu']}` (LLVM host CPU corrected with /proc/cpuinfo), "
             "tuning: MetaSchedule (XGBoost cost model), the same budget for FP32 and int8: "
             + ("; ".join(f"{m} {b} trials" for m, b in result.get("budget", {}).items()) or f"{result['trials']} trials")
             + ("" if result.get("tuned_now", True) else
                " (`--no-tune`: the committed databases as they are; the table says which CPU each was tuned on, "
                "and a database tuned on another CPU is applied here as it is, not tuned for this one)")
             + " (cover: trials every kernel gets first; chunk: trials per kernel after that, largest first; "
             "each kernel's default schedule is measured too and kept where no sample beat it, and the applied "
             "schedules are checked against the unscheduled kernels: targets/verify.py); "
             f"run took {result['seconds'] / 60:.1f} min. Batch {rows[0]['batch'] if rows else '-'}."
             + (f" The Ethos-U rows were recomputed alone (`--npu-only`, {result['npu_run']}, "
                f"{result['npu_seconds'] / 60:.1f} min) and merged; the other rows are from the run above."
                if result.get("npu_run") else "") + "\n",
             "Guest instructions are counted by a qemu-user TCG plugin: **a proxy for work, not an ARM latency** "
             "(caches, memory and pipelines are ignored). Emulated wall time is never reported. CUDA builds are "
             "validated by compiling the generated CUDA source with nvcc for the arch; no GPU was available, so "
             "GPU latency is not measured.\n"]
    if result.get("runs"):  # rows merged from several runs (scripts/bench_targets.py --merge)
        lines += ["Rows by run:\n"] + [
            f"- {', '.join(x['models'])}: `{x['command']}`" + (f", {x['date']}" if x.get("date") else "")
            + f", {x['minutes']} min" + ("" if x.get("tuned_now", True) else ", `--no-tune`") for x in result["runs"]] + [""]
    x86 = [r for r in rows if "untuned_ms" in r]
    if x86:
        lines += ["## x86 latency (median over repeats after warm-up, IQR in brackets)\n",
                  "| model | variant | target | untuned ms | tuned ms | tuned on | trials | tuning s (all runs) | tuned output vs untuned |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in x86:
            lines.append(f"| {r['model']} | {_variant(r)} | {r['target']} | {_fmt(r['untuned_ms'])} "
                         f"({_fmt(r['untuned_iqr_ms'])}) | {_fmt(r.get('tuned_ms'))}"
                         f"{' (' + _fmt(r['tuned_iqr_ms']) + ')' if 'tuned_iqr_ms' in r else ''} | "
                         f"{r.get('tuned_on', result['host_cpu']) if 'tuned_ms' in r else '-'} | {_fmt(r.get('trials'))} | {_fmt(r.get('tuning_s'))} | {_fmt(r.get('tuned_same_output'), '.2e')} |")
        lines.append("")
    arm = [r for r in rows if r["arch"] == "aarch64"]
    if arm:
        lines += ["## aarch64 under qemu-user (outputs vs the x86 run; instructions are a proxy)\n",
                  "| model | variant | target | bit-exact vs x86 | max abs diff | guest M insns / call (proxy) |",
                  "|---|---|---|---|---|---|"]
        for r in arm:
            lines.append(f"| {r['model']} | {_variant(r)} | {r['target']} | {_fmt(r.get('bit_exact_vs_x86'))} | "
                         f"{_fmt(r.get('max_abs_diff_vs_x86'), '.2e')} | {_fmt(r.get('guest_minsns_per_call'), '.1f')} |")
        lines.append("")
    gpu = [r for r in rows if r["arch"] == "cuda"]
    if gpu:
        lines += ["## CUDA (built here, nvcc-validated)\n", "| model | variant | target | nvcc | latency |",
                  "|---|---|---|---|---|"]
        for r in gpu:
            lines.append(f"| {r['model']} | {_variant(r)} | {r['target']} | {r['nvcc']} | {r['latency']} |")
        lines.append("")
    lines += npu_section(rows)
    if any(r["arch"] == "ethos-u" for r in rows):
        lines += [f"![int8 latency across targets]({cross_target_chart(rows, out_md.with_name(out_md.stem + '_npu.png'))})\n",
                  "int8 latency per model, batch 1: x86-host measured here (blue) next to each Ethos-U NPU's "
                  "Vela-estimated latency (orange, hatched: estimates). The Arm rows have no latency (qemu-user "
                  "instruction counts are a proxy) and the CUDA rows none either (no GPU here), so they have no bar.\n"]
    if x86:
        labels = [f"{r['model']}\n{r['variant']} {r['target']}" for r in x86]
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(x86)), 4))
        idx = np.arange(len(x86))
        ax.bar(idx - 0.2, [r["untuned_ms"] for r in x86], 0.4, label="untuned")
        if any("tuned_ms" in r for r in x86):
            ax.bar(idx + 0.2, [r.get("tuned_ms", 0) for r in x86], 0.4, label="tuned")
        ax.set_xticks(idx, labels, fontsize=7)
        ax.set_ylabel("ms per batch (median)")
        ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(chart, dpi=100)
        plt.close(fig)
        lines += [f"![x86 latency]({chart.name})\n"]
    out_md.write_text("\n".join(lines) + "\n")
    out_md.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
