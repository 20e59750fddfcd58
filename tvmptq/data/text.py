"""Text data of the evaluation protocol: English sentences from the standard library's docstrings."""
from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tvmptq.data import cache
from tvmptq.errors import DataError

N_SENTENCES = 1669
SENTENCES_SHA256 = "ee523733a48ef3dd2aa3e37bb6cae6640128c20969bb7af103d931425f32d9fc"
N_CALIBRATION_SENTENCES = 256
N_EVALUATION_SENTENCES = 512
_COLLECTOR = Path(__file__).with_name("_stdlib_docs.py")
_COLLECT_TIMEOUT_S = 600


def sentences_sha256(sentences: list[str]) -> str:
    """sha256 of ``"\\n".join(sentences)`` in UTF-8 (the protocol's self-check)."""
    return hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest()


def compute_sentences() -> list[str]:
    """Collect the sentences in a fresh isolated interpreter (no cache).

    A child process keeps the import side effects out of this process and makes the result
    independent of what this process has already imported; its output goes to /dev/null so that
    even C-level prints during imports stay silent.
    """
    with tempfile.TemporaryDirectory(prefix="tvmptq-sentences-") as tmp:
        out = Path(tmp) / "sentences.json"
        try:
            proc = subprocess.run(
                [sys.executable, "-I", str(_COLLECTOR), str(out)],
                cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, timeout=_COLLECT_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise DataError(f"collecting standard-library sentences took over {_COLLECT_TIMEOUT_S} s") from None
        if proc.returncode != 0 or not out.exists():
            tail = proc.stderr.decode(errors="replace")[-2000:]
            raise DataError(f"collecting standard-library sentences failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _sentences_cached() -> tuple[str, ...]:
    sentences = cache.load_strings("stdlib_sentences", SENTENCES_SHA256)
    if sentences is None:
        sentences = compute_sentences()
        # Only the protocol-exact list is cached (other Python versions give other docstrings).
        if sentences_sha256(sentences) == SENTENCES_SHA256:
            cache.save_strings("stdlib_sentences", sentences)
    return tuple(sentences)


def stdlib_sentences() -> list[str]:
    """All 1669 protocol sentences, sorted (cached on disk and in process)."""
    return list(_sentences_cached())


def calibration_sentences() -> list[str]:
    """The 256 calibration sentences: positions 0, 2, ..., 510."""
    return stdlib_sentences()[0:2 * N_CALIBRATION_SENTENCES:2]


def evaluation_sentences() -> list[str]:
    """The 512 evaluation sentences: positions 1, 3, ..., 1023 (disjoint from calibration)."""
    return stdlib_sentences()[1:2 * N_EVALUATION_SENTENCES:2]
