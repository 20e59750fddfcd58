"""Black-box tests of the ``tvmptq`` command line: every bad input gives one clear line on stderr
that names the problem, and the documented exit code (2 bad options, 3 bad data, 4 bad model).

All runs go through ``tvmptq.cli.main([...])`` (which returns the exit code), except one subprocess
test of the installed console script. ``digits_resnet`` with few calibration samples keeps it fast.
"""
import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tvmptq.cli import main

MODEL = "digits_resnet"  # expects per-sample shape (1, 8, 8)
FAST = ["--calib-samples", "64", "--observer", "minmax", "--report", "0"]
ZOO = ("digits_resnet", "digits_vit", "efficientnet_lite0", "minilm_l6")


def run(capsys, *argv):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    """The single ``tvmptq: error: ...`` line (progress bars share stderr), asserting no traceback."""
    assert "Traceback" not in err
    lines = [line for line in re.split(r"[\r\n]", err) if line.startswith("tvmptq: error:")]
    assert len(lines) == 1, f"expected exactly one error line on stderr, got: {err!r}"
    return lines[0]


def expect_error(capsys, code: int, *argv) -> str:
    rc, _, err = run(capsys, *argv)
    assert rc == code, f"exit code {rc}, expected {code}; stderr: {err!r}"
    return error_line(err)


# --------------------------------------------------------------------------------------------
# Happy paths


def test_models_lists_the_zoo(capsys):
    rc, out, _ = run(capsys, "models")
    assert rc == 0
    listed = [line.split()[0] for line in out.splitlines() if line.strip() and not line.startswith("set ")]
    assert sorted(listed) == sorted(ZOO)


@pytest.fixture(scope="module")
def w4a8_plan(tmp_path_factory):
    """`tvmptq quantize digits_resnet --wbits 4 --abits 8 --observer mse --out tmp/plan.npz --report 3`,
    run once for the module: (exit code, stdout, stderr, plan path)."""
    plan_path = tmp_path_factory.mktemp("cli") / "tmp" / "plan.npz"
    plan_path.parent.mkdir()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["quantize", MODEL, "--wbits", "4", "--abits", "8", "--observer", "mse",
                   "--out", str(plan_path), "--report", "3", "--calib-samples", "64"])
    return rc, out.getvalue(), err.getvalue(), plan_path


def test_quantize_writes_plan(w4a8_plan):
    rc, out, err, plan_path = w4a8_plan
    assert rc == 0, err
    assert "W4A8" in out and "mse observer" in out
    assert "calibration samples 64" in out
    # --report 3: the table header (2 lines) and exactly 3 layer rows.
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| tensor")]
    assert len(rows) == 3, out
    assert f"plan written to {plan_path}" in out
    assert plan_path.is_file()

    import tvmptq
    plan = tvmptq.QuantPlan.load(plan_path)
    assert plan.model == MODEL
    assert plan.config["weight_bits"] == 4 and plan.config["activation_bits"] == 8
    assert plan.config["observer"] == "mse"


def test_evaluate_plan_prints_accuracy(capsys, w4a8_plan):
    plan_path = w4a8_plan[3]
    assert plan_path.is_file()
    rc, out, err = run(capsys, "evaluate", MODEL, "--plan", plan_path)
    assert rc == 0, err
    assert "W4A8" in out and "digits" in out
    match = re.search(r"^\s*accuracy\s+([0-9.]+)\s*$", out, re.M)
    assert match, out
    assert 80.0 < float(match.group(1)) <= 100.0  # digits_resnet W4A8 scores about 98 %


def test_layer_overrides_are_applied_and_reported(capsys):
    rc, out, err = run(capsys, "quantize", MODEL, "--layer", "linear=float", "--layer", "conv2d_1=w4a6",
                       "--report", "-1", "--calib-samples", "64", "--observer", "minmax")
    assert rc == 0, err
    assert re.search(r"layers left in float \(1\): linear\b", out), out
    assert re.search(r"^\| linear \| linear \| linear \| float \|", out, re.M), out
    assert re.search(r"^\| \S+ \| conv2d_1 \| conv2d \| W4A6 \|", out, re.M), out


def test_installed_console_script(tmp_path):
    """The entry point installed in the venv starts and documents the commands and exit codes."""
    exe = Path(sys.prefix) / "bin" / "tvmptq"
    assert exe.is_file(), f"console script not installed at {exe}"
    done = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    for command in ("models", "quantize", "evaluate", "compile", "run", "demo"):
        assert command in done.stdout
    assert "Exit codes" in done.stdout and "2 bad options, 3 bad data, 4 bad model" in done.stdout


# --------------------------------------------------------------------------------------------
# Bad models (exit 4)


def test_unknown_model_lists_known_models(capsys):
    line = expect_error(capsys, 4, "quantize", "no_such_model")
    assert "no_such_model" in line
    for name in ZOO:
        assert name in line


def test_corrupt_onnx_file(capsys, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes())
    line = expect_error(capsys, 4, "quantize", bad)
    assert "bad.onnx" in line


def test_empty_onnx_file(capsys, tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    line = expect_error(capsys, 4, "quantize", empty)
    assert "empty.onnx" in line and "invalid ONNX model" in line


def test_missing_onnx_file(capsys, tmp_path):
    line = expect_error(capsys, 4, "quantize", tmp_path / "missing.onnx")
    assert "not found" in line and "missing.onnx" in line


def test_onnx_with_op_onnx2torch_does_not_support(capsys, tmp_path):
    # Hardmax is a standard ONNX op (the checker accepts it) with no onnx2torch converter.
    graph = helper.make_graph(
        [helper.make_node("Hardmax", ["x"], ["y"], name="hardmax_node", axis=-1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    path = tmp_path / "hardmax.onnx"
    onnx.save(model, str(path))
    line = expect_error(capsys, 4, "quantize", path)
    assert "Hardmax" in line and "hardmax_node" in line and "unsupported" in line


# --------------------------------------------------------------------------------------------
# Bad data (exit 3)


def test_wrong_input_shape_names_both_shapes(capsys, tmp_path):
    npy = tmp_path / "wrong.npy"
    np.save(npy, np.zeros((8, 1, 4, 4), np.float32))
    line = expect_error(capsys, 3, "quantize", MODEL, "--calib", npy, *FAST)
    assert "(1, 4, 4)" in line and "(1, 8, 8)" in line and MODEL in line


def test_empty_calibration_array(capsys, tmp_path):
    npy = tmp_path / "empty.npy"
    np.save(npy, np.zeros((0, 1, 8, 8), np.float32))
    line = expect_error(capsys, 3, "quantize", MODEL, "--calib", npy, *FAST)
    assert "empty" in line and "empty.npy" in line


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_calibration_array(capsys, tmp_path, bad):
    data = np.ones((16, 1, 8, 8), np.float32)
    data[3, 0, 2, 5] = bad
    npy = tmp_path / "nonfinite.npy"
    np.save(npy, data)
    line = expect_error(capsys, 3, "quantize", MODEL, "--calib", npy, *FAST)
    assert "nonfinite.npy" in line and "NaN/Inf" in line


def test_truncated_npy(capsys, tmp_path):
    npy = tmp_path / "trunc.npy"
    np.save(npy, np.zeros((8, 1, 8, 8), np.float32))
    npy.write_bytes(npy.read_bytes()[:100])
    line = expect_error(capsys, 3, "quantize", MODEL, "--calib", npy, *FAST)
    assert "trunc.npy" in line and "cannot read" in line


def test_npz_with_several_arrays_needs_a_key(capsys, tmp_path):
    npz = tmp_path / "two.npz"
    np.savez(npz, a=np.zeros((8, 1, 8, 8), np.float32), b=np.zeros(3, np.float32))
    line = expect_error(capsys, 3, "quantize", MODEL, "--calib", npz, *FAST)
    assert "two.npz" in line and "a, b" in line


def test_all_padding_attention_mask_is_refused(capsys, tmp_path):
    # MiniLM calibration arrays where sample 1 has no real token: refused before the model loads
    # any data into the observers, with the sample named.
    ids = np.zeros((3, 128), np.int64)
    mask = np.ones((3, 128), np.int64)
    mask[1] = 0
    npz = tmp_path / "tokens.npz"
    np.savez(npz, input_ids=ids, attention_mask=mask)
    line = expect_error(capsys, 3, "quantize", "minilm_l6", "--calib", npz, "--report", "0")
    assert "tokens.npz" in line and "all-padding attention_mask" in line and "sample 1" in line


def test_missing_calibration_folder(capsys, tmp_path):
    missing = tmp_path / "no_such_folder"
    line = expect_error(capsys, 3, "quantize", MODEL, "--calib", missing, *FAST)
    assert "not found" in line and "no_such_folder" in line


def test_empty_calibration_folder(capsys, tmp_path):
    folder = tmp_path / "empty_folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    line = expect_error(capsys, 3, "quantize", MODEL, "--calib", folder, *FAST)
    assert "no images" in line and "empty_folder" in line


def test_unreadable_image_in_calibration_folder(capsys, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"this is not a png")
    line = expect_error(capsys, 3, "quantize", MODEL, "--calib", folder, *FAST)
    assert "broken.png" in line


def test_corrupt_plan_file(capsys, tmp_path):
    plan = tmp_path / "plan.npz"
    plan.write_bytes(b"PK\x03\x04 definitely not a zip archive" + bytes(range(256)))
    line = expect_error(capsys, 3, "evaluate", MODEL, "--plan", plan)
    assert "plan" in line and "plan.npz" in line


def test_npz_that_is_not_a_plan(capsys, tmp_path):
    plan = tmp_path / "other.npz"
    np.savez(plan, weights=np.zeros(3))
    line = expect_error(capsys, 3, "evaluate", MODEL, "--plan", plan)
    assert "plan" in line and "other.npz" in line


def test_missing_plan_file(capsys, tmp_path):
    line = expect_error(capsys, 3, "evaluate", MODEL, "--plan", tmp_path / "nope.npz")
    assert "not found" in line and "nope.npz" in line


# --------------------------------------------------------------------------------------------
# Bad options (exit 2)


@pytest.mark.parametrize("flag, value, what", [("--wbits", "9", "weight"), ("--abits", "1", "activation"),
                                               ("--wbits", "1", "weight"), ("--abits", "16", "activation")])
def test_unsupported_bit_width(capsys, flag, value, what):
    line = expect_error(capsys, 2, "quantize", MODEL, flag, value)
    assert f"{what} bit width {value}" in line and "2 to 8" in line


@pytest.mark.parametrize("spec, shown", [
    ("linear", "'linear'"),            # no '='
    ("linear=w", "'linear=w'"),        # no digits after w
    ("linear=x4", "'linear=x4'"),      # neither float nor wXaY
    ("linear=", "'linear='"),
])
def test_bad_layer_syntax(capsys, spec, shown):
    line = expect_error(capsys, 2, "quantize", MODEL, "--layer", spec, *FAST)
    assert "--layer" in line and shown in line


def test_layer_override_with_unsupported_bits(capsys):
    line = expect_error(capsys, 2, "quantize", MODEL, "--layer", "linear=w9a8", *FAST)
    assert "weight bit width 9" in line


def test_unknown_evaluation_set_for_evaluate(capsys, w4a8_plan):
    line = expect_error(capsys, 2, "evaluate", MODEL, "--plan", w4a8_plan[3], "--set", "no_such_set")
    assert "no_such_set" in line and "digits" in line


def test_text_calibration_for_model_without_tokenizer(capsys, tmp_path):
    txt = tmp_path / "sentences.txt"
    txt.write_text("hello world\n")
    line = expect_error(capsys, 2, "quantize", MODEL, "--calib", txt, *FAST)
    assert MODEL in line and "tokenizer" in line


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["quantize", MODEL, "--wbits", "four"])
    assert exc.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Inputs that were once accepted silently or crashed with a traceback.


def test_layer_override_for_unknown_layer(capsys):
    line = expect_error(capsys, 2, "quantize", MODEL, "--layer", "no_such_layer=float", *FAST)
    assert "no_such_layer" in line


def test_non_positive_calib_samples(capsys, tmp_path):
    npy = tmp_path / "calib.npy"
    np.save(npy, np.random.default_rng(0).random((16, 1, 8, 8), np.float32))
    line = expect_error(capsys, 2, "quantize", MODEL, "--calib", npy, "--calib-samples", "0",
                        "--observer", "minmax", "--report", "0")
    assert "--calib-samples" in line


def test_scalar_npy_with_calib_samples(capsys, tmp_path):
    npy = tmp_path / "scalar.npy"
    np.save(npy, np.float32(3.0))
    line = expect_error(capsys, 3, "quantize", MODEL, "--calib", npy, *FAST)
    assert "scalar.npy" in line or "shape" in line


def test_non_numeric_npy(capsys, tmp_path):
    npy = tmp_path / "strings.npy"
    np.save(npy, np.full((8, 1, 8, 8), "a"))
    line = expect_error(capsys, 3, "quantize", MODEL, "--calib", npy, *FAST)
    assert "strings.npy" in line or "dtype" in line


def test_zero_batch_size(capsys):
    line = expect_error(capsys, 2, "quantize", MODEL, "--batch-size", "0", *FAST)
    assert "--batch-size" in line


def test_unknown_evaluation_set(capsys):
    line = expect_error(capsys, 2, "quantize", MODEL, "--evaluate", "no_such_set", *FAST)
    assert "no_such_set" in line
