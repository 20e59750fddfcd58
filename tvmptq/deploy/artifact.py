"""Compile a plan into an artifact directory, and load one back without the model.

An artifact is a folder:
  model.so       the TVM-compiled integer-only Relax program (static batch, see manifest)
  plan.npz       the plan it was lowered from; its sha256 is in the manifest, so a plan swapped
                 after compiling is caught instead of silently describing another program
  manifest.json  inputs, outputs, preprocessing, target, versions, hashes, op counts, float
                 islands (including the float branches of a QwT v1 plan and their Relax ops)
  report.md      the same facts for people (op counts, float ops, per-layer summary)
  tokenizer.json text models only: sentences are encoded without the model package

Loading needs only these files: nothing is traced, imported or built from PyTorch, which is the
point of compiling. Every defect (missing file, bad JSON, hash mismatch) is an ArtifactError.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, ModelError, ShapeError, TvmptqError
from ..quant.plan import QuantPlan

ARTIFACT_FORMAT = "tvmptq-artifact/1"
LIBRARY, PLAN, MANIFEST, REPORT = "model.so", "plan.npz", "manifest.json", "report.md"


class ArtifactError(DataError):
    """An artifact folder that is missing, incomplete, corrupt or inconsistent (exit code 3)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__  # TVM puts the message after its traceback


def make_target(spec: str):
    """A TVM target from a name ("llvm", "llvm -mcpu=skylake") or a JSON object string."""
    import tvm
    try:
        return tvm.target.Target(json.loads(spec) if spec.strip().startswith("{") else spec)
    except Exception as err:  # TVM raises ValueError / TVMError depending on what is wrong
        raise ConfigError(f"invalid TVM target {spec!r}: {_first_line(err)}") from None


def _tensor_info(ty) -> dict:
    return {"dtype": str(ty.dtype), "shape": [int(d) for d in ty.shape]}


def _output_grids(plan: QuantPlan) -> list:
    """The plan's grid of each model output (None for outputs computed in float, e.g. a normalized
    embedding): it turns the program's dequantized outputs back into the integers it computed."""
    steps = [s for s in plan.program if s.get("kind") == "output"]
    values = steps[0]["values"] if steps else []
    values = values if isinstance(values, list) else [values]
    grids = []
    for v in values:
        t = plan.tensors.get(v.get("value")) if isinstance(v, dict) else None
        grids.append(None if t is None else {"tensor": t.name, "scale": t.scale, "zero_point": t.zero_point,
                                             "qmin": t.qmin, "qmax": t.qmax})
    return grids


def _float_branches(plan: QuantPlan) -> list[dict]:
    """The plan's declared float branches (QwT v1), each with the Relax float ops it lowers to."""
    from relay_passes.islands import float_branch_ops
    return [{"layer": lp.name, **lp.attrs["float_branch"], "relax_ops": list(float_branch_ops(lp))}
            for lp in plan.layers if lp.attrs.get("float_branch")]


def _lower(model, plan: QuantPlan, batch: int, target=None, tensorize: bool = True):
    """(float op counts, lowered module): lowering failures become ModelError (exit code 4).

    ``target``: the registry Target compiled for (None for plain TVM targets). With ``tensorize``,
    the target's kernel passes run too (relay_passes.tensorize.TensorizeDot:
    VNNI kernels on x86 with VNNI, sdot kernels on Arm with dotprod, dp4a kernels on CUDA; what stays untensorized, and
    why, is in the module's report, which the manifest keeps). ``tvmptq compile`` and ``tvmptq tune`` both lower through here, so the
    database a tune writes is keyed on the very kernels compile builds."""
    import relay_passes as rp
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.export's deprecation chatter
            imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(batch)))
            mod = rp.lowering_passes(plan)(imported)
            if tensorize and target is not None and target.arch in ("x86_64", "aarch64", "cuda"):
                mod = rp.TensorizeDot(target, plan, warn=False)(mod)
            return rp.op_counts(imported), mod
    except TvmptqError:
        raise
    except Exception as err:
        raise ModelError(f"lowering {model.name!r} with plan {plan.config.get('name')} failed: "
                         f"{type(err).__name__}: {_first_line(err)}") from err


def make_folder(path, what: str = "output folder") -> Path:
    """``path`` created (with its parents) or a DataError naming it (exit code 3)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"cannot use {path} as the {what}: it exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the {what} {path}: {err.strerror or err}") from None
    return path


def _dot_instruction(named, target: str) -> tuple:
    """(instruction or None, why none): the int8 dot-product instruction the target's kernels use."""
    if named is None:
        return None, f"{target!r} is a plain TVM target, not a registry target, so no int8 kernels are chosen for it"
    from relay_passes.tensorize import target_isa
    isa, why = target_isa(named)
    return (isa.instruction, "") if isa is not None else (None, why)


def compile_artifact(model, plan: QuantPlan, out_dir, batch: int = 8, target: str | None = None,
                     preprocess: dict | None = None, source: str | None = None, plan_file=None,
                     database=None, targets_file=(), tensorize: bool = True) -> dict:
    """Lower ``plan`` on ``model`` at a static ``batch``, compile for ``target`` and write the
    artifact folder. Returns the manifest. ``plan_file``: the .npz ``plan`` was loaded from, copied
    byte for byte so the manifest's hash is that of the user's file (a re-save would differ in
    its zip timestamps). ``target``: a registry name (``tvmptq targets``; cross-compiled where the
    target names a cross compiler), a TVM target string or a JSON dict. ``database``: a tuning
    database folder (targets.tune) whose schedules are applied; None: untuned. ``tensorize``: the
    target's int8 kernels (x86 VNNI, see ``_lower``); False builds the plain lowering. ``target``
    None: this machine's default (``targets.default_target``: x86-host on x86)."""
    import tvm
    import relay_passes as rp
    from targets.build import compile_module, export, resolve

    from .. import __version__
    from .inputs import preprocessing_for
    from .report import format_report, layer_kernels

    if target is None:
        from targets import default_target
        target, _ = default_target(targets_file)

    if plan.model != model.name:
        raise ConfigError(f"plan was made for model {plan.model!r}; it does not fit {model.name!r}")
    if batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {batch}")
    fixed = plan.config.get("fixed_batch") or getattr(model, "batch", None)
    batch = int(fixed) if fixed else batch  # a graph that fixes its batch compiles at that batch
    named, tvm_target = resolve(target, targets_file)
    out = make_folder(out_dir, "artifact folder")  # before the work: an impossible path fails fast
    before, mod = _lower(model, plan, batch, named, tensorize)
    try:
        executable = compile_module(mod, tvm_target, database)
    except ModelError as err:
        raise ModelError(f"TVM could not compile {model.name!r} for {target!r}: {err}") from err

    export(executable, out / LIBRARY, named)
    cuda_entry = None
    if tvm_target.kind.name == "cuda":  # the source nvcc validates (targets.cuda.validate)
        from targets.cuda import CUDA_SOURCE, cuda_source
        src = cuda_source(executable)
        if src is not None:
            (out / CUDA_SOURCE).write_text(src)
            cuda_entry = {"file": CUDA_SOURCE, "sha256": sha256_file(out / CUDA_SOURCE),
                          "arch": str(tvm_target.attrs.get("arch", ""))}
    if plan_file is not None:
        if not (out / PLAN).exists() or not (out / PLAN).samefile(plan_file):
            shutil.copyfile(plan_file, out / PLAN)
    else:
        plan.save(out / PLAN)
    preprocess = dict(preprocess or preprocessing_for(model))
    if preprocess.get("kind") == "tokens":
        shutil.copyfile(preprocess.pop("tokenizer_source"), out / preprocess["tokenizer"])

    func = mod["main"]
    ret = func.ret_ty
    rets = list(ret.fields) if hasattr(ret, "fields") else [ret]
    grids = _output_grids(plan)
    out_names = (["logits"] if model.task == "classification" else ["embedding"]) if len(rets) == 1 else \
        [f"output_{i}" for i in range(len(rets))]
    manifest = {
        "format": ARTIFACT_FORMAT,
        "model": {"name": model.name, "task": model.task, "source": source or f"zoo:{model.name}",
                  "description": model.description},
        "batch": batch,
        "batch_fixed_by_model": bool(fixed),
        "inputs": [{"name": n, "relax_name": p.name, **_tensor_info(p.ty)}
                   for n, p in zip(model.input_names, func.params)],
        "outputs": [{"name": n, **_tensor_info(t), "grid": grids[i] if i < len(grids) else None}
                    for i, (n, t) in enumerate(zip(out_names, rets))],
        "preprocess": preprocess,
        "target": {"requested": target, "kind": tvm_target.kind.name, "resolved": str(tvm_target),
                   "name": named.name if named else None,
                   "arch": named.arch if named else _arch_of(tvm_target),
                   "capabilities": list(named.caps()) if named else [],
                   "cross_cc": named.cross_cc if named else "",
                   "tuning_database": str(database) if database is not None else None},
        "tvm_version": tvm.__version__,
        "tvmptq_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "library": {"file": LIBRARY, "sha256": sha256_file(out / LIBRARY)},
        **({"cuda_source": cuda_entry} if cuda_entry else {}),
        "plan": {"file": PLAN, "sha256": sha256_file(out / PLAN), "config": plan.config.get("name"),
                 "observer": plan.config.get("observer"), "layers": len(plan.layers)},
        "op_counts": {"before": dict(sorted(before.items())), "after": dict(sorted(rp.op_counts(mod).items()))},
        "kernels": rp.tensorize_report(mod),
        "layer_kernels": layer_kernels(plan, rp.tensorize_report(mod),
                                       *(_dot_instruction(named, target) if tensorize else (None, "--no-tensorize"))),
        "float_islands": list(plan.float_islands),
        "float_branches": _float_branches(plan),
        "float_layers": list(plan.float_layers),
        "float_ops": rp.float_ops(mod),  # float ops beyond the input quantize / output dequantize
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (out / REPORT).write_text(format_report(manifest, plan))
    return manifest


def _arch_of(tvm_target) -> str:
    if tvm_target.kind.name == "cuda":
        return "cuda"
    triple = str(tvm_target.attrs.get("mtriple", "")) if hasattr(tvm_target, "attrs") else ""
    return "aarch64" if triple.startswith("aarch64") else "x86_64"


@dataclass
class Artifact:
    """A loaded artifact: ``run(*arrays)`` takes any number of samples (numpy in, numpy out)."""

    path: Path
    manifest: dict
    plan: QuantPlan
    vm: object
    device: object

    @property
    def batch(self) -> int:
        return int(self.manifest["batch"])

    def check_inputs(self, arrays) -> list[np.ndarray]:
        """The arrays cast to the program's dtypes, or a clear ShapeError/DataError."""
        specs = self.manifest["inputs"]
        if len(arrays) != len(specs):
            raise ShapeError(f"the artifact takes {len(specs)} input(s) ({', '.join(s['name'] for s in specs)}), "
                             f"got {len(arrays)}")
        out = []
        for spec, a in zip(specs, arrays):
            a = np.asarray(a)
            want = tuple(spec["shape"][1:])
            if a.ndim < 1 or a.shape[1:] != want:
                raise ShapeError(f"input {spec['name']!r} has per-sample shape {a.shape[1:]}, the artifact "
                                 f"expects {want} (arrays of shape (N, {', '.join(map(str, want))}))")
            if len(a) == 0:
                raise DataError(f"input {spec['name']!r} is empty")
            if a.dtype.kind not in "biuf":
                raise DataError(f"input {spec['name']!r} has non-numeric dtype {a.dtype}")
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise DataError(f"input {spec['name']!r} has non-finite (NaN/Inf) values")
            if "int" in spec["dtype"] and a.dtype.kind == "f" and not np.array_equal(a, np.round(a)):
                raise DataError(f"input {spec['name']!r} must hold integers ({spec['dtype']}), got {a.dtype} "
                                "with fractional values")
            out.append(a.astype(spec["dtype"], copy=False))
        return out

    def run(self, *arrays):
        """Outputs for every sample: chunks of the static batch, the last one padded by repeating
        its last sample and trimmed (as targets.build.compile_integer does)."""
        from targets.build import run_batched
        arrays = self.check_inputs(arrays)
        n = len(arrays[0])
        if any(len(a) != n for a in arrays):
            raise ShapeError(f"inputs have different sample counts: {[len(a) for a in arrays]}")
        return run_batched(self.vm["main"], arrays, self.batch, [a.dtype for a in arrays], self.device)

    def integers(self, outputs: np.ndarray, index: int = 0) -> np.ndarray | None:
        """The integers the program computed for output ``index`` (None for a float output)."""
        grid = self.manifest["outputs"][index].get("grid")
        if grid is None:
            return None
        q = np.round(np.asarray(outputs, np.float32) / np.float32(grid["scale"])) + grid["zero_point"]
        return q.astype(np.int64)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a tvmptq artifact: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"cannot read {path}: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path} is not a {ARTIFACT_FORMAT} manifest")
    missing = [k for k in ("model", "batch", "inputs", "outputs", "preprocess", "library", "plan") if k not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}")
    return manifest


def _checked_file(folder: Path, entry: dict, what: str) -> Path:
    path = folder / entry["file"]
    if not path.is_file():
        raise ArtifactError(f"artifact {folder} is incomplete: {what} {entry['file']} is missing")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ArtifactError(f"{path} does not match the manifest (sha256 {digest[:12]}..., expected "
                            f"{entry['sha256'][:12]}...): it changed after compiling; compile again")
    return path


def load_artifact(path) -> Artifact:
    """Check hashes, load the plan and the compiled library; no PyTorch model is involved."""
    import tvm
    from tvm import relax

    folder = Path(path)
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder not found: {folder}")
    manifest = _read_manifest(folder)
    plan = QuantPlan.load(_checked_file(folder, manifest["plan"], "plan"))
    library = _checked_file(folder, manifest["library"], "library")
    if manifest.get("tvm_version") != tvm.__version__:
        warnings.warn(f"artifact compiled with TVM {manifest.get('tvm_version')}, running TVM {tvm.__version__}")
    from targets.build import host_arch, runs_here
    if not runs_here(manifest.get("target", {})):
        t = manifest["target"]
        raise ArtifactError(f"{folder} was compiled for {t.get('name') or t.get('requested')} "
                            f"({t.get('arch') or t.get('kind')}), not for this {host_arch()} machine: run it on that "
                            "device (tvmptq profile --rpc-tracker ...) or, for aarch64, under qemu (targets.qemu)")
    try:
        kind = manifest.get("target", {}).get("kind", "llvm")
        device = tvm.cpu() if kind in ("llvm", "c") else tvm.device(kind)
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), device)
    except Exception as err:
        raise ArtifactError(f"cannot load the compiled library {library}: {_first_line(err)}") from None
    return Artifact(folder, manifest, plan, vm, device)
