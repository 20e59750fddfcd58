"""Data of the evaluation protocol (vision views, digits, sentences) and user calibration data.

Heavy work (photos, views, stdlib import) happens on first call, not on import.
"""
from tvmptq.data.digits import calibration_digits, evaluation_digits, load_digits_split
from tvmptq.data.text import (
    SENTENCES_SHA256,
    calibration_sentences,
    evaluation_sentences,
    sentences_sha256,
    stdlib_sentences,
)
from tvmptq.data.user import (check_finite_nonempty, load_array_file, load_image_folder, load_named_arrays,
                             load_text_file)
from tvmptq.data.vision import (
    CALIBRATION_PHOTOS,
    EVALUATION_PHOTOS,
    VIEW_SHA256,
    calibration_views,
    evaluation_views,
    load_photos,
    make_views,
    preprocess_imagenet,
    views_sha256,
)

__all__ = [
    "CALIBRATION_PHOTOS", "EVALUATION_PHOTOS", "VIEW_SHA256", "SENTENCES_SHA256",
    "load_photos", "make_views", "calibration_views", "evaluation_views", "preprocess_imagenet",
    "views_sha256",
    "load_digits_split", "calibration_digits", "evaluation_digits",
    "stdlib_sentences", "calibration_sentences", "evaluation_sentences", "sentences_sha256",
    "load_image_folder", "load_array_file", "load_named_arrays", "load_text_file", "check_finite_nonempty",
]
