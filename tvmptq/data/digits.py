"""Digits data of the evaluation protocol: scikit-learn's 8x8 digits, split 70/30."""
from __future__ import annotations

import functools

import numpy as np

N_CALIBRATION_DIGITS = 256
TEST_FRACTION = 0.3
SPLIT_SEED = 0
CALIBRATION_SEED = 0


@functools.lru_cache(maxsize=1)
def _split_cached() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    arrays = tuple(np.ascontiguousarray(a) for a in (x_train, y_train, x_test, y_test))
    for a in arrays:
        a.flags.writeable = False  # shared by every caller
    return arrays


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): x float32 (N,1,8,8) in [0,1], y int64; 1257/540 images.

    Stratified 70/30 split with random_state=0. The arrays are read-only (shared); copy to modify.
    """
    return _split_cached()


def calibration_digits() -> np.ndarray:
    """The 256 calibration images: the first 256 training images after a seed-0 permutation."""
    x_train = load_digits_split()[0]
    order = np.random.default_rng(CALIBRATION_SEED).permutation(len(x_train))
    return x_train[order[:N_CALIBRATION_DIGITS]]


def evaluation_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the whole test split (540 images); none are in the training split."""
    _, _, x_test, y_test = load_digits_split()
    return x_test, y_test
