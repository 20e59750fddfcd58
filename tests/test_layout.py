"""The layout ARCHITECTURE.md promises: no file-level import cycles in tvmptq/, relay_passes/ or
targets/ (an import inside a function is a dependency too), imports in the direction of the layers,
and modules small enough to read in one sitting."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tvmptq", "relay_passes", "targets")
MAX_LINES = 600  # "about 500": the point past which a module must be split by responsibility


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = f
    return mods


def _imports(name: str, path: Path, mods: dict) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (top level or in a function)."""
    is_pkg = path.name == "__init__.py"
    deps = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            # `from pkg import sub` depends on the submodule, `from pkg import name` on pkg itself
            targets = [f"{root}.{a.name}" if f"{root}.{a.name}" in mods else root for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                deps.add(t)
    return deps


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]; counter[0] += 1
        stack.append(start); on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1
                    stack.append(w); on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle():
    """The check itself can fail: a made-up a -> b -> c -> a cycle is found, a chain is not."""
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_function_level_imports_count(tmp_path):
    """A deferred import inside a function is a dependency: the graph sees it."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from tvmptq.quant import plan\n    return plan\n")
    assert _imports("targets.fake", f, _modules()) == {"tvmptq.quant.plan"}


def test_no_import_cycles():
    cycles = import_cycles(_graph())
    assert not cycles, "file-level import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


# Layers, lowest first (ARCHITECTURE.md): a module of a layer may import its own layer and the ones
# below. Modules in none of them (the compile/tune/profile side of targets/, tvmptq's deploy, api,
# cli and demo) sit above all of these and may import any of them.
LAYERS = [
    ("core", ("tvmptq.errors", "tvmptq.util", "tvmptq.quant", "tvmptq.data", "tvmptq.eval", "tvmptq.zoo",
              "tvmptq.reference", "tvmptq.algorithms", "tvmptq.export", "tvmptq.peers.onnxruntime_peer")),
    ("registry", ("targets",)),          # targets/__init__.py: the target descriptions, data only
    ("kernels", ("targets.kernels",)),
    ("passes", ("relay_passes",)),
]


def _layer(mod: str) -> int | None:
    for i, (_, prefixes) in enumerate(LAYERS):
        if mod in prefixes or any(mod.startswith(p + ".") for p in prefixes if p != "targets"):
            return i
    return None


def test_lower_layers_never_import_higher_ones():
    """The PTQ core never imports TVM's passes or the targets, the kernels never import a pass, and
    the passes never import the compile/tune/profile side of targets."""
    bad = []
    for mod, deps in _graph().items():
        lm = _layer(mod)
        if lm is None:
            continue
        for d in sorted(deps):
            ld = _layer(d)
            if ld is None or ld > lm:
                bad.append(f"{mod} ({LAYERS[lm][0]}) imports {d} ({'above' if ld is None else LAYERS[ld][0]})")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_modules_stay_readable(pkg):
    long = [f"{p.relative_to(ROOT)} ({n} lines)" for p in sorted((ROOT / pkg).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines (split by responsibility): {', '.join(long)}"
