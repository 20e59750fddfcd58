"""The evaluation protocol's data sets (EVAL_PROTOCOL.md self-checks) and the user data loaders."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from tvmptq.data import cache, digits, text, user, vision
from tvmptq.errors import DataError, TvmptqError


def _row_hashes(batch):
    return {hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest() for x in batch}


# --- vision ---------------------------------------------------------------------------------

def test_photo_split_is_by_scene_and_complete():
    photos = vision.load_photos()
    assert set(vision.CALIBRATION_PHOTOS).isdisjoint(vision.EVALUATION_PHOTOS)
    assert set(vision.CALIBRATION_PHOTOS) | set(vision.EVALUATION_PHOTOS) == set(photos)
    for name, img in photos.items():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name


def test_views_match_protocol_hashes():
    calibration, evaluation = vision.make_views()
    assert calibration.shape == (256, 224, 224, 3) and calibration.dtype == np.uint8
    assert evaluation.shape == (512, 224, 224, 3) and evaluation.dtype == np.uint8
    assert vision.views_sha256(calibration) == vision.VIEW_SHA256["calibration"]
    assert vision.views_sha256(evaluation) == vision.VIEW_SHA256["evaluation"]


def test_views_recomputed_without_cache_match_protocol_hashes():
    # make_views() may be served from the disk cache; this checks the computation itself (~3 s).
    calibration, evaluation = vision.compute_views()
    assert vision.views_sha256(calibration) == vision.VIEW_SHA256["calibration"]
    assert vision.views_sha256(evaluation) == vision.VIEW_SHA256["evaluation"]


def test_calibration_and_evaluation_views_share_no_image():
    calibration, evaluation = vision.make_views()
    assert _row_hashes(calibration).isdisjoint(_row_hashes(evaluation))


def test_shared_views_are_read_only():
    with pytest.raises(ValueError):
        vision.calibration_views()[0, 0, 0, 0] = 1


def test_preprocess_imagenet():
    views = np.array([[[[0, 127, 255]]]], dtype=np.uint8)  # one 1x1 RGB image
    x = vision.preprocess_imagenet(views)
    assert x.dtype == np.float32 and x.shape == (1, 3, 1, 1)
    np.testing.assert_array_equal(x.ravel(), [-127 / 128, 0.0, 1.0])


# --- digits ---------------------------------------------------------------------------------

def test_digits_split_sizes_and_types():
    x_train, y_train, x_test, y_test = digits.load_digits_split()
    assert x_train.shape == (1257, 1, 8, 8) and x_test.shape == (540, 1, 8, 8)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64 and y_test.dtype == np.int64
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    # Stratified: every class is in the test split in (about) its overall proportion.
    assert np.bincount(y_test).min() >= 50


def test_digits_calibration_comes_from_train_and_evaluation_is_the_test_split():
    x_train, _, x_test, y_test = digits.load_digits_split()
    calibration = digits.calibration_digits()
    assert calibration.shape == (256, 1, 8, 8)
    assert _row_hashes(calibration) <= _row_hashes(x_train)
    assert _row_hashes(calibration).isdisjoint(_row_hashes(x_test))
    x_eval, y_eval = digits.evaluation_digits()
    assert len(x_eval) == len(y_eval) == 540
    np.testing.assert_array_equal(y_eval, y_test)


# --- text -----------------------------------------------------------------------------------

def test_sentences_match_protocol_hash():
    sentences = text.stdlib_sentences()
    assert len(sentences) == 1669
    assert text.sentences_sha256(sentences) == text.SENTENCES_SHA256


def test_sentences_recomputed_without_cache_match_protocol_hash():
    # Runs the collector in a fresh interpreter even though this process has imported numpy etc.
    sentences = text.compute_sentences()
    assert len(sentences) == text.N_SENTENCES
    assert text.sentences_sha256(sentences) == text.SENTENCES_SHA256


def test_sentence_splits_are_interleaved_and_disjoint():
    sentences = text.stdlib_sentences()
    calibration, evaluation = text.calibration_sentences(), text.evaluation_sentences()
    assert len(calibration) == 256 and len(evaluation) == 512
    assert calibration[:2] == [sentences[0], sentences[2]] and calibration[-1] == sentences[510]
    assert evaluation[:2] == [sentences[1], sentences[3]] and evaluation[-1] == sentences[1023]
    assert set(calibration).isdisjoint(evaluation)


# --- disk cache -----------------------------------------------------------------------------

def test_cache_rejects_files_whose_hash_differs(tmp_path, monkeypatch):
    monkeypatch.setenv("TVMPTQ_CACHE", str(tmp_path))
    arr = np.arange(12, dtype=np.uint8)
    cache.save_array("demo", arr)
    assert np.array_equal(cache.load_array("demo", cache.array_sha256(arr)), arr)
    assert cache.load_array("demo", cache.array_sha256(arr + 1)) is None
    (tmp_path / "demo.npy").write_bytes(b"not an npy file")
    assert cache.load_array("demo", cache.array_sha256(arr)) is None
    assert cache.load_array("missing", cache.array_sha256(arr)) is None

    cache.save_strings("words", ["a", "b"])
    assert cache.load_strings("words", cache.sha256_hex(b"a\nb")) == ["a", "b"]
    assert cache.load_strings("words", cache.sha256_hex(b"a\nc")) is None


# --- user data ------------------------------------------------------------------------------

def test_errors_carry_exit_codes():
    assert issubclass(DataError, TvmptqError) and DataError.exit_code == 3


def test_image_folder_missing(tmp_path):
    with pytest.raises(DataError, match="calibration folder not found"):
        user.load_image_folder(tmp_path / "nope")


def test_image_folder_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="no images"):
        user.load_image_folder(tmp_path)


def test_image_folder_unreadable_image_is_named(tmp_path):
    Image.new("RGB", (40, 30), (127, 127, 127)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        user.load_image_folder(tmp_path)


def test_image_folder_loads_resizes_and_normalises(tmp_path):
    Image.new("RGB", (60, 40), (255, 127, 0)).save(tmp_path / "a.png")
    Image.new("L", (30, 50), 127).save(tmp_path / "b.png")  # grey becomes RGB
    x = user.load_image_folder(tmp_path, size=16, resize=20)
    assert x.shape == (2, 3, 16, 16) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 8, 8], [128 / 128, 0.0, -127 / 128], atol=1e-6)
    np.testing.assert_allclose(x[1], 0.0, atol=1e-6)
    assert user.load_image_folder(tmp_path, size=16, resize=20, layout="NHWC").shape == (2, 16, 16, 3)


def test_array_file_npy_and_npz(tmp_path):
    arr = np.ones((4, 3), np.float32)
    np.save(tmp_path / "a.npy", arr)
    np.savez(tmp_path / "one.npz", x=arr)
    np.savez(tmp_path / "two.npz", x=arr, y=arr * 2)
    np.testing.assert_array_equal(user.load_array_file(tmp_path / "a.npy"), arr)
    np.testing.assert_array_equal(user.load_array_file(tmp_path / "one.npz"), arr)
    np.testing.assert_array_equal(user.load_array_file(tmp_path / "two.npz", key="y"), arr * 2)
    with pytest.raises(DataError, match="say which key"):
        user.load_array_file(tmp_path / "two.npz")


def test_array_file_npz_missing_key_lists_available_keys(tmp_path):
    np.savez(tmp_path / "two.npz", images=np.ones(3), labels=np.ones(3))
    with pytest.raises(DataError, match="no array 'pixels'.*images, labels"):
        user.load_array_file(tmp_path / "two.npz", key="pixels")


def test_array_file_missing(tmp_path):
    with pytest.raises(DataError, match="not found"):
        user.load_array_file(tmp_path / "none.npy")


def test_array_file_with_nan_is_rejected(tmp_path):
    arr = np.ones((2, 3), np.float32)
    arr[0, 1] = np.nan
    arr[1, 2] = np.inf
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(DataError, match="2 non-finite"):
        user.load_array_file(tmp_path / "bad.npy")


def test_empty_array_is_rejected(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match="empty"):
        user.load_array_file(tmp_path / "empty.npy")
    with pytest.raises(DataError, match="empty"):
        user.check_finite_nonempty(np.array([]), "inputs")


def test_text_file(tmp_path):
    (tmp_path / "s.txt").write_text("first sentence\n\n  second one  \n")
    assert user.load_text_file(tmp_path / "s.txt") == ["first sentence", "second one"]
    (tmp_path / "blank.txt").write_text("\n   \n")
    with pytest.raises(DataError, match="no non-empty lines"):
        user.load_text_file(tmp_path / "blank.txt")
