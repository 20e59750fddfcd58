"""Collect the protocol's sentences: first lines of the standard library's own docstrings.

Run as a script in a fresh, isolated interpreter (``python -I _stdlib_docs.py OUT.json``), never
imported into a working process: importing the whole standard library has side effects there
(threads, signal handlers, printing), and the result depends on what was imported before, e.g.
once torch is loaded ``inspect.getfile`` is replaced and its docstring sentence is lost.
Only standard-library modules may be imported at the top of this file.
"""
import contextlib
import importlib
import inspect
import io
import json
import sys
import warnings

# Modules the protocol skips: they open windows or browsers, print on import, are test
# suites or installers, or exist only on Windows.
SKIPPED_MODULES = frozenset({
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "ensurepip",
    "pydoc_data", "test", "venv", "msilib", "winreg", "winsound", "nt", "msvcrt",
})
MIN_WORDS, MAX_WORDS = 5, 40


def _import_quietly(name):
    """The imported module, or None if importing it raised anything (SystemExit included)."""
    try:
        with warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except (Exception, SystemExit):
        return None


def _documented_objects(name, module):
    """The module, then its public classes/functions/builtins defined in the module itself."""
    yield module
    for attr in sorted(dir(module)):
        if attr.startswith("_"):
            continue
        try:
            obj = getattr(module, attr)
        except Exception:
            continue
        is_callable_kind = inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)
        if is_callable_kind and getattr(obj, "__module__", None) == name:
            yield obj


def collect():
    """Sorted, de-duplicated first docstring lines of 5 to 40 words (see EVAL_PROTOCOL.md)."""
    sentences = set()
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIPPED_MODULES:
            continue
        module = _import_quietly(name)
        if module is None:
            continue
        for obj in _documented_objects(name, module):
            try:
                doc = inspect.getdoc(obj)
            except Exception:
                continue
            if not doc:
                continue
            first_line = doc.split("\n", 1)[0].strip()
            if MIN_WORDS <= len(first_line.split()) <= MAX_WORDS:
                sentences.add(first_line)
    return sorted(sentences)


if __name__ == "__main__":
    result = collect()
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False)
