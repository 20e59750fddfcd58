"""On-disk cache for the protocol's deterministic data sets, verified by sha256 on every load.

The data are cheap to recompute (seconds) but used by almost every test and command, so each
set is stored once under ``$TVMPTQ_CACHE`` (default ``~/.cache/tvmptq``). A cached file is only
trusted when its hash matches the protocol's; anything else is recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    """The cache directory: ``$TVMPTQ_CACHE`` or ``~/.cache/tvmptq`` (not created here)."""
    return Path(os.environ.get("TVMPTQ_CACHE") or Path.home() / ".cache" / "tvmptq")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def array_sha256(arr: np.ndarray) -> str:
    """sha256 of an array's raw C-order bytes (dtype and shape are not part of the hash)."""
    return sha256_hex(np.ascontiguousarray(arr).tobytes())


def _write_atomically(path: Path, write) -> None:
    # Write to a temporary file in the same folder, then rename: concurrent processes never
    # see a half-written cache file. A cache that cannot be written is simply not used.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is plain public data
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass


def load_array(name: str, expected_sha256: str) -> np.ndarray | None:
    """The cached array ``<name>.npy`` if it exists and hashes to `expected_sha256`, else None."""
    path = cache_dir() / f"{name}.npy"
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return arr if array_sha256(arr) == expected_sha256 else None


def save_array(name: str, arr: np.ndarray) -> None:
    _write_atomically(cache_dir() / f"{name}.npy", lambda f: np.save(f, arr, allow_pickle=False))


def load_strings(name: str, expected_sha256: str) -> list[str] | None:
    """The cached list ``<name>.json`` if sha256 of its newline-join is `expected_sha256`, else None."""
    path = cache_dir() / f"{name}.json"
    try:
        strings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        return None
    return strings if sha256_hex("\n".join(strings).encode("utf-8")) == expected_sha256 else None


def save_strings(name: str, strings: list[str]) -> None:
    data = json.dumps(strings, ensure_ascii=False, indent=0).encode("utf-8")
    _write_atomically(cache_dir() / f"{name}.json", lambda f: f.write(data))
