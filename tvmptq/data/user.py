"""User calibration data for the CLI: image folders, .npy/.npz arrays and text files.

Every problem is raised as a DataError whose message names the file or folder and what is wrong,
because the CLI prints that message as is.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from tvmptq.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def check_finite_nonempty(arr: np.ndarray, what: str) -> np.ndarray:
    """Return `arr` unchanged, or raise DataError if it is empty or holds NaN/Inf values."""
    arr = np.asarray(arr)
    if arr.size == 0:
        raise DataError(f"{what} is empty (shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.inexact):
        n_bad = int(np.count_nonzero(~np.isfinite(arr)))
        if n_bad:
            raise DataError(f"{what} has {n_bad} non-finite (NaN/Inf) values out of {arr.size}")
    return arr


def _resize_and_centre_crop(img: Image.Image, size: int, resize: int) -> np.ndarray:
    # Shorter side to `resize` (bicubic), then the central size x size square.
    w, h = img.size
    scale = resize / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32)


def load_image_folder(
    path: str | Path,
    size: int = 224,
    resize: int = 256,
    mean: Sequence[float] = (127, 127, 127),
    std: Sequence[float] = (128, 128, 128),
    layout: str = "NCHW",
) -> np.ndarray:
    """Every image in a folder (sorted by name, not recursive) as one float32 batch.

    Each image: RGB, shorter side resized to `resize` (bicubic), centre crop `size`,
    ``(x - mean) / std`` per channel. Returns (N, 3, size, size) or, for layout "NHWC", (N, size, size, 3).
    """
    folder = Path(path)
    if layout not in ("NCHW", "NHWC"):
        raise ConfigError(f"image layout must be NCHW or NHWC, got {layout!r}")
    if size <= 0 or resize < size:
        raise ConfigError(f"need 0 < size <= resize, got size={size}, resize={resize}")
    if not folder.exists():
        raise DataError(f"calibration folder not found: {folder}")
    if not folder.is_dir():
        raise DataError(f"calibration path is not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(
            f"calibration folder has no images: {folder} (looked for {', '.join(IMAGE_SUFFIXES)})"
        )

    images = []
    for file in files:
        try:
            with Image.open(file) as img:
                images.append(_resize_and_centre_crop(img.convert("RGB"), size, resize))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"cannot read calibration image {file}: {exc}") from None

    batch = np.stack(images)
    batch = (batch - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    if layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return check_finite_nonempty(np.ascontiguousarray(batch, dtype=np.float32), f"images from {folder}")


def load_array_file(path: str | Path, key: str | None = None) -> np.ndarray:
    """The array in a .npy file, or in a .npz file (`key`, or its only array)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"calibration array file not found: {file}")
    suffix = file.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise DataError(f"calibration array file must be .npy or .npz: {file}")
    try:
        # allow_pickle=False: a data file must never be able to run code.
        loaded = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read calibration array file {file}: {exc}") from None

    if suffix == ".npy":
        if not isinstance(loaded, np.ndarray):
            loaded.close()
            raise DataError(f"{file} is named .npy but is not a .npy array file")
        if key is not None:
            raise DataError(f"{file} is a .npy file with a single array; a key ({key!r}) only applies to .npz")
        arr = loaded
    else:
        with loaded:
            keys = list(loaded.files)
            if key is None:
                if len(keys) != 1:
                    raise DataError(f"{file} holds {len(keys)} arrays ({', '.join(keys) or 'none'}); say which key to use")
                key = keys[0]
            if key not in keys:
                raise DataError(f"{file} has no array {key!r}; available keys: {', '.join(keys) or 'none'}")
            try:
                arr = loaded[key]
            except ValueError as exc:  # e.g. an object array, which needs pickle
                raise DataError(f"cannot read array {key!r} of {file}: {exc}") from None
    return check_finite_nonempty(arr, f"calibration data {file}" + (f"[{key!r}]" if suffix == ".npz" else ""))


def load_named_arrays(path: str | Path, names: Sequence[str], key: str | None = None,
                      what: str = "calibration") -> tuple[np.ndarray, ...]:
    """One array per model input from a .npy (single-input models) or a .npz: its only array, the
    array ``key``, or, for several inputs, the arrays named like the inputs (missing or extra keys
    are named in the error)."""
    file = Path(path)
    names = list(names)
    if len(names) == 1 or key is not None or file.suffix.lower() != ".npz":
        if len(names) > 1:
            raise DataError(f"the model takes {len(names)} inputs ({', '.join(names)}): give a .npz with "
                            f"one array per input, named like them ({file} holds one array)")
        return (load_array_file(file, key),)
    if not file.is_file():
        raise DataError(f"{what} array file not found: {file}")
    try:
        with np.load(file, allow_pickle=False) as loaded:
            keys = list(loaded.files)
            missing, extra = [n for n in names if n not in keys], [k for k in keys if k not in names]
            if missing or extra:
                raise DataError(f"{file} must hold one array per model input ({', '.join(names)}): "
                                + "; ".join(part for part in (
                                    f"missing {', '.join(missing)}" if missing else "",
                                    f"extra {', '.join(extra)}" if extra else "") if part))
            arrays = tuple(loaded[n] for n in names)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {what} array file {file}: {exc}") from None
    for n, a in zip(names, arrays):
        check_finite_nonempty(a, f"{what} data {file}[{n!r}]")
    if len({len(a) for a in arrays}) != 1:
        raise DataError(f"{file}: the inputs have different sample counts "
                        + ", ".join(f"{n} {len(a)}" for n, a in zip(names, arrays)))
    check_attention_mask(names, arrays, f"{what} data {file}")
    return arrays


def check_attention_mask(names: Sequence[str], arrays: Sequence[np.ndarray], what: str) -> None:
    """Refuse samples whose ``attention_mask`` has no real token: a mean-pooled embedding of no
    tokens is 0/0, and every softmax row would be all padding, so any output would be made up."""
    for n, a in zip(names, arrays):
        if n == "attention_mask" and a.ndim == 2:
            empty = np.flatnonzero(~a.astype(bool).any(axis=1))
            if empty.size:
                raise DataError(f"{what}: {empty.size} sample(s) have an all-padding attention_mask (no real "
                                f"token), e.g. sample {', '.join(map(str, empty[:5]))}")


def load_text_file(path: str | Path) -> list[str]:
    """One sentence per non-empty line of a UTF-8 text file (lines stripped)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"calibration text file not found: {file}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read calibration text file {file}: {exc}") from None
    sentences = [line.strip() for line in text.splitlines() if line.strip()]
    if not sentences:
        raise DataError(f"calibration text file has no non-empty lines: {file}")
    return sentences


def warn_truncated(encodings, sentences: Sequence[str], seq_len: int) -> None:
    """Warn, naming them, about sentences the tokenizer cut at the model's sequence length.

    The compiled program has a fixed length; cutting is what the FP32 model's own tokenizer does
    too, so the result is what the float model would give, but the user should know it happened."""
    cut = [i for i, e in enumerate(encodings) if e.overflowing]
    if cut:
        first = ", ".join(f"#{i} {sentences[i][:40]!r}" for i in cut[:3])
        warnings.warn(f"{len(cut)} of {len(encodings)} sentences are longer than {seq_len} tokens and were "
                      f"truncated to {seq_len} (first: {first})", stacklevel=3)
