"""Files -> model inputs for ``tvmptq run``, driven by the manifest's ``preprocess`` entry.

The entry is written at compile time (``preprocessing_for``) from what the model's protocol set
or the user's --image-size/--resize/--mean/--std flags say, so that running an artifact needs no
model code: images are resized, centre-cropped and normalized from the manifest alone, and
sentences are encoded with the tokenizer copied into the artifact.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.user import IMAGE_SUFFIXES, _resize_and_centre_crop, check_attention_mask, warn_truncated
from ..errors import ConfigError, DataError

# Zoo models: the preprocessing of their protocol set. Digits are sklearn's 8x8 images scaled to
# [0, 1] with the ink bright (0 background); photos use EfficientNet-Lite's (x - 127) / 128.
_ZOO = {
    "digits_resnet": {"kind": "image", "mode": "L", "size": 8, "resize": 8, "mean": [0.0], "std": [255.0]},
    "digits_vit": {"kind": "image", "mode": "L", "size": 8, "resize": 8, "mean": [0.0], "std": [255.0]},
    "efficientnet_lite0": {"kind": "image", "mode": "RGB", "size": 224, "resize": 256,
                           "mean": [127.0] * 3, "std": [128.0] * 3},
}


def preprocessing_for(model, image_size: int = 224, resize: int = 256, mean=(127, 127, 127),
                      std=(128, 128, 128)) -> dict:
    """The manifest's ``preprocess`` entry for ``model`` (user models: from the CLI's data flags)."""
    if model.name in _ZOO:
        return dict(_ZOO[model.name])
    if model.name == "minilm_l6":
        from ..zoo.minilm import SEQ_LEN, model_dir
        return {"kind": "tokens", "tokenizer": "tokenizer.json", "seq_len": SEQ_LEN, "pad_id": 0,
                "pad_token": "[PAD]", "tokenizer_source": str(model_dir() / "tokenizer.json")}
    examples = model.example_inputs(1)
    shape = tuple(examples[0].shape)
    if len(examples) == 1 and len(shape) == 4 and shape[1] in (1, 3) and shape[2] == shape[3]:
        size = shape[2]
        channels = shape[1]
        return {"kind": "image", "mode": "L" if channels == 1 else "RGB", "size": size,
                "resize": resize if size == image_size else size,
                "mean": [float(v) for v in mean][:channels], "std": [float(v) for v in std][:channels]}
    return {"kind": "array"}


def _image_files(paths: list[Path]) -> list[Path]:
    files = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"input folder has no images: {p} (looked for {', '.join(IMAGE_SUFFIXES)})")
            files += found
        else:
            files.append(p)
    return files


def load_images(paths: list[Path], pre: dict) -> np.ndarray:
    """Images as one float32 NCHW batch: resize the shorter side, centre crop, (x - mean) / std."""
    images = []
    for file in _image_files(paths):
        try:
            with Image.open(file) as img:
                images.append(_resize_and_centre_crop(img.convert(pre["mode"]), pre["size"], pre["resize"]))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"cannot read input image {file}: {exc}") from None
    x = np.stack(images)
    x = x[..., None] if x.ndim == 3 else x  # grey images have no channel axis
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def encode_sentences(folder: Path, sentences: list[str], pre: dict) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64, exactly as the sentences set encodes them."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(folder / pre["tokenizer"]))
    tok.enable_padding(length=pre["seq_len"], pad_id=pre["pad_id"], pad_token=pre["pad_token"])
    tok.enable_truncation(max_length=pre["seq_len"])
    enc = tok.encode_batch(list(sentences))
    warn_truncated(enc, sentences, pre["seq_len"])
    return (np.array([e.ids for e in enc], np.int64), np.array([e.attention_mask for e in enc], np.int64))


def _load_array_file(path: Path, names: list[str]) -> tuple[np.ndarray, ...]:
    try:
        loaded = np.load(path, allow_pickle=False)  # a data file must never be able to run code
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read input array file {path}: {exc}") from None
    if isinstance(loaded, np.ndarray):
        return (loaded,)
    with loaded:
        keys = list(loaded.files)
        if len(names) == 1 and len(keys) == 1:
            return (loaded[keys[0]],)
        missing, extra = [n for n in names if n not in keys], [k for k in keys if k not in names]
        if missing or extra:
            raise DataError(f"{path} must hold one array per model input ({', '.join(names)}): "
                            + "; ".join(p for p in (f"missing {', '.join(missing)}" if missing else "",
                                                     f"extra {', '.join(extra)}" if extra else "") if p))
        return tuple(loaded[n] for n in names)


def load_inputs(folder: Path, manifest: dict, paths) -> tuple[tuple[np.ndarray, ...], list[str]]:
    """(model input arrays, one label per sample) from a .npy/.npz, a .txt of sentences, or image
    files and folders."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise DataError(f"input not found: {p}")
    pre = manifest["preprocess"]
    names = [s["name"] for s in manifest["inputs"]]
    suffixes = {p.suffix.lower() for p in paths if p.is_file()}
    if suffixes & {".npy", ".npz", ".txt"}:
        if len(paths) != 1:
            raise ConfigError("give one .npy/.npz/.txt input file at a time")
        path = paths[0]
        if path.suffix.lower() == ".txt":
            if pre.get("kind") != "tokens":
                raise ConfigError(f"model {manifest['model']['name']!r} does not take sentences "
                                  f"(its inputs: {', '.join(names)})")
            try:
                sentences = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"cannot read input text file {path}: {exc}") from None
            if not sentences:
                raise DataError(f"input text file has no non-empty lines: {path}")
            return encode_sentences(folder, sentences, pre), [s[:60] for s in sentences]
        arrays = _load_array_file(path, names)
        check_attention_mask(names, arrays, f"input {path}")
        return arrays, [f"{path.name}[{i}]" for i in range(len(arrays[0]) if arrays[0].ndim else 0)]
    if pre.get("kind") != "image":
        raise ConfigError(f"model {manifest['model']['name']!r} does not take images; "
                          "give a .npy/.npz" + (" or a .txt of sentences" if pre.get("kind") == "tokens" else ""))
    files = _image_files(paths)
    return (load_images(files, pre),), [f.name for f in files]
