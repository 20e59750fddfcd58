"""Vision data of the evaluation protocol: public photos cut into random 224x224 views.

Photos come from scikit-learn and scikit-image (bundled with the packages, so nothing is
downloaded). They are split by scene into calibration and evaluation photos, and each split is
cut into views with a torchvision-style RandomResizedCrop driven by one seeded generator
(see /work/shared/EVAL_PROTOCOL.md). The views hash to fixed sha256 values, which pins the
exact draw order, resampling and library versions.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image

from tvmptq.data import cache
from tvmptq.errors import ShapeError

CALIBRATION_PHOTOS = (
    "sk_china", "ski_coffee", "ski_rocket", "ski_hubble_deep_field", "ski_immunohistochemistry",
    "ski_coins", "ski_moon", "ski_grass", "ski_microaneurysms", "ski_text",
)
EVALUATION_PHOTOS = (
    "ski_chelsea", "ski_astronaut", "ski_motorcycle_left", "ski_motorcycle_right", "sk_flower",
    "ski_retina", "ski_camera", "ski_clock", "ski_brick", "ski_gravel", "ski_cell", "ski_page",
)
# skimage.data functions that return one photo; stereo_motorcycle() gives two more.
_SKIMAGE_PHOTOS = (
    "chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "camera", "coins", "clock", "moon", "brick", "grass", "gravel", "cell",
    "microaneurysms", "text", "page",
)

VIEW_SEED = 20240607
N_CALIBRATION_VIEWS = 256
N_EVALUATION_VIEWS = 512
VIEW_SIZE = 224
CROP_AREA_FRACTION = (0.25, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)
CROP_TRIES = 10

VIEW_SHA256 = {
    "calibration": "6a52478571aca2b0760d5c19e0c79f532a0530d618849a965bbf27df5a440bfa",
    "evaluation": "34913bfa269fe880ec1737a70ab0aa452fe2a8471cf83ec905dec87a8e37e75a",
}


def views_sha256(arr: np.ndarray) -> str:
    """sha256 of the raw bytes of a stacked uint8 NHWC view array (the protocol's self-check)."""
    return cache.array_sha256(arr)


def _as_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


@functools.lru_cache(maxsize=1)
def _load_photos_cached() -> dict[str, np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = {}
    samples = load_sample_images()
    for filename, img in zip(samples.filenames, samples.images):
        photos["sk_" + Path(filename).stem] = img
    for name in _SKIMAGE_PHOTOS:
        photos["ski_" + name] = getattr(skimage.data, name)()
    left, right, _disparity = skimage.data.stereo_motorcycle()
    photos["ski_motorcycle_left"] = left
    photos["ski_motorcycle_right"] = right

    photos = {name: _as_rgb(img) for name, img in photos.items()}
    for img in photos.values():
        img.flags.writeable = False  # shared by every caller of load_photos()
    return photos


def load_photos() -> dict[str, np.ndarray]:
    """All protocol photos by name, as read-only uint8 HxWx3 arrays (grey repeated to 3 channels)."""
    return dict(_load_photos_cached())


def _random_resized_crop_box(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of one crop, drawing from `rng` exactly as torchvision's get_params does.

    Per try: area fraction, then log-uniform aspect; if the box fits, top then left. The draw
    order matters: it decides every later view and so the protocol's hashes.
    """
    area = height * width
    log_aspect = (math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1]))
    for _ in range(CROP_TRIES):
        target_area = area * rng.uniform(*CROP_AREA_FRACTION)
        aspect = math.exp(rng.uniform(*log_aspect))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w

    # No try fitted: centre crop of the whole photo with its aspect clamped to CROP_ASPECT.
    in_aspect = width / height
    if in_aspect < CROP_ASPECT[0]:
        w = width
        h = int(round(w / CROP_ASPECT[0]))
    elif in_aspect > CROP_ASPECT[1]:
        h = height
        w = int(round(h * CROP_ASPECT[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _cut_views(rng: np.random.Generator, photos: dict[str, np.ndarray], names: tuple[str, ...], count: int) -> np.ndarray:
    views = np.empty((count, VIEW_SIZE, VIEW_SIZE, 3), dtype=np.uint8)
    for i in range(count):
        photo = photos[names[i % len(names)]]  # round-robin over the split's photos
        top, left, h, w = _random_resized_crop_box(rng, *photo.shape[:2])
        # Crop first, then resize the crop alone: resizing the full photo with a `box` samples
        # pixels outside the box at the edges and gives different bytes.
        crop = Image.fromarray(photo[top:top + h, left:left + w])
        view = np.asarray(crop.resize((VIEW_SIZE, VIEW_SIZE), Image.BICUBIC))
        if rng.uniform() < 0.5:
            view = view[:, ::-1]
        views[i] = view
    return views


def compute_views() -> tuple[np.ndarray, np.ndarray]:
    """Cut the calibration then the evaluation views from one seeded generator (no cache)."""
    photos = load_photos()
    rng = np.random.default_rng(VIEW_SEED)
    calibration = _cut_views(rng, photos, CALIBRATION_PHOTOS, N_CALIBRATION_VIEWS)
    evaluation = _cut_views(rng, photos, EVALUATION_PHOTOS, N_EVALUATION_VIEWS)
    return calibration, evaluation


@functools.lru_cache(maxsize=1)
def make_views() -> tuple[np.ndarray, np.ndarray]:
    """The protocol's (calibration [256,224,224,3], evaluation [512,224,224,3]) uint8 NHWC views.

    Loaded from the disk cache when its hashes match, else computed and cached. The arrays are
    read-only because every caller shares them; copy before modifying.
    """
    calibration = cache.load_array("views_calibration", VIEW_SHA256["calibration"])
    evaluation = cache.load_array("views_evaluation", VIEW_SHA256["evaluation"])
    if calibration is None or evaluation is None:
        # The two splits share one generator, so neither can be computed alone.
        calibration, evaluation = compute_views()
        # Only protocol-exact views are cached; with other library versions the views are
        # recomputed each time, and the protocol tests report the mismatch.
        if views_sha256(calibration) == VIEW_SHA256["calibration"]:
            cache.save_array("views_calibration", calibration)
        if views_sha256(evaluation) == VIEW_SHA256["evaluation"]:
            cache.save_array("views_evaluation", evaluation)
    calibration.flags.writeable = False
    evaluation.flags.writeable = False
    return calibration, evaluation


def calibration_views() -> np.ndarray:
    """The 256 calibration views, uint8 NHWC (read-only)."""
    return make_views()[0]


def evaluation_views() -> np.ndarray:
    """The 512 evaluation views, uint8 NHWC (read-only)."""
    return make_views()[1]


def preprocess_imagenet(views_uint8_nhwc: np.ndarray) -> np.ndarray:
    """uint8 NHWC views -> float32 NCHW model input, ``(x - 127) / 128`` (TFLite EfficientNet-Lite)."""
    x = np.asarray(views_uint8_nhwc, dtype=np.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ShapeError(f"expected uint8 views of shape (N, H, W, 3), got {x.shape}")
    return np.ascontiguousarray(((x - 127.0) / 128.0).transpose(0, 3, 1, 2))
