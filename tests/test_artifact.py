"""`tvmptq compile` and `tvmptq run`: the artifact round trip on digits, bad inputs and artifacts,
and a fresh interpreter that runs the artifact without ever loading the model.

One digits W8A8 plan and one compiled artifact are shared by the module (about 20 s on 2 cores);
tests that damage an artifact work on a copy.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tvmptq
from tvmptq.cli import main

pytest.importorskip("tvm")
from tvmptq.deploy import load_artifact  # noqa: E402  (needs tvm)

from test_cli import expect_error, run  # noqa: E402

MODEL = "digits_resnet"


@pytest.fixture(scope="module")
def digits(tmp_path_factory, digits_cli_plan):
    """(plan path, artifact folder, evaluation images, simulated outputs of the plan)."""
    tmp = tmp_path_factory.mktemp("artifact")
    plan = digits_cli_plan
    assert main(["compile", MODEL, "--plan", str(plan), "-o", str(tmp / "art"), "--batch", "8", "--target", "llvm"]) == 0
    x = np.array(tvmptq.get_set("digits").evaluation()[0][:20])  # 20: the last chunk of 8 is padded
    qm = tvmptq.from_plan(tvmptq.load(MODEL), tvmptq.QuantPlan.load(plan))
    return plan, tmp / "art", x, qm.runner()(x)


@pytest.fixture
def art_copy(digits, tmp_path):
    return shutil.copytree(digits[1], tmp_path / "art")


def test_compile_writes_a_complete_artifact(digits):
    import json
    plan, art = digits[0], digits[1]
    assert {p.name for p in art.iterdir()} == {"model.so", "plan.npz", "manifest.json", "report.md"}
    m = json.loads((art / "manifest.json").read_text())
    assert m["model"]["source"] == "zoo:digits_resnet" and m["batch"] == 8
    assert m["inputs"] == [{"name": "input", "relax_name": "x", "dtype": "float32", "shape": [8, 1, 8, 8]}]
    assert m["outputs"][0]["name"] == "logits" and m["outputs"][0]["shape"] == [8, 10]
    assert m["plan"]["sha256"] == __import__("hashlib").sha256(plan.read_bytes()).hexdigest()
    assert m["plan"]["config"] == "W8A8" and m["target"]["requested"] == "llvm" and m["tvm_version"]
    assert m["op_counts"]["before"]["nn.conv2d -> float32"] == 9 and m["op_counts"]["after"]["nn.conv2d -> int32"] == 9
    assert m["float_ops"] == [] and m["float_islands"] == []
    report = (art / "report.md").read_text()
    assert "| nn.conv2d -> int32 | 0 | 9 |" in report and "dequantize -> float32: 1" in report
    assert "| conv2d_4 | conv2d | 8 | 8 |" in report


def test_run_npy_equals_simulation_bit_for_bit(capsys, digits, tmp_path):
    _, art, x, sim = digits
    np.save(tmp_path / "x.npy", x)
    rc, out, err = run(capsys, "run", art, "--input", tmp_path / "x.npy", "-o", tmp_path / "out.npy", "--top-k", "3")
    assert rc == 0, err
    got = np.load(tmp_path / "out.npy")
    assert got.shape == (20, 10) and np.array_equal(got, sim)
    labels = tvmptq.get_set("digits").labels()[:20]
    assert f"x.npy[0]: {labels[0]} (" in out and "... 10 more" in out
    assert (got.argmax(1) == labels).mean() > 0.9


def test_run_image_folder(capsys, digits, tmp_path):
    _, art, x, _ = digits
    folder = tmp_path / "imgs"
    folder.mkdir()
    pixels = np.round(x[:3, 0] * 255).astype(np.uint8)  # the digits set scales ink to [0, 1]
    for i, p in enumerate(pixels):
        Image.fromarray(p, "L").save(folder / f"d{i}.png")
    rc, out, err = run(capsys, "run", art, "--input", folder, "-o", tmp_path / "img.npy")
    assert rc == 0, err
    want = load_artifact(art).run(pixels[:, None].astype(np.float32) / 255)
    assert np.array_equal(np.load(tmp_path / "img.npy"), want)
    assert "d2.png: " in out


def test_fresh_interpreter_runs_the_artifact_without_the_model(digits, tmp_path):
    """A new process with every way to load a model disabled gives the same bits as this one."""
    _, art, x, _ = digits
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, torch, tvmptq.api as api, tvmptq.zoo.registry as reg\n"
        "def no(*a, **k): raise SystemExit('the model was loaded')\n"
        "api.get_model = api.from_onnx = reg.get_model = torch.export.export = no\n"
        "from tvmptq.cli import main\n"
        f"sys.exit(main(['run', {str(art)!r}, '--input', {str(tmp_path / 'x.npy')!r}, '-o', "
        f"{str(tmp_path / 'sub.npy')!r}]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(tmp_path / "sub.npy"), load_artifact(art).run(x))


def test_user_onnx_model_runs_after_the_onnx_file_is_gone(capsys, digits, tmp_path):
    import torch
    from tvmptq.peers.onnxruntime_peer import export_onnx
    x = digits[2]
    onnx_path = export_onnx(tvmptq.load(MODEL).build(), (torch.from_numpy(x[:1]),), tmp_path / "user.onnx",
                            ["input"], preprocess=False)
    model = tvmptq.load(str(onnx_path))
    qm = tvmptq.quantize(model, (np.array(tvmptq.get_set("digits").calibration()[0][:64]),),
                         tvmptq.make_config(8, 8), progress=False)
    qm.plan.save(tmp_path / "plan.npz")
    rc, out, err = run(capsys, "compile", onnx_path, "--plan", tmp_path / "plan.npz", "-o", tmp_path / "art",
                       "--batch", "4", "--mean", "0", "--std", "255")
    assert rc == 0, err
    onnx_path.unlink()
    np.save(tmp_path / "x.npy", x)
    rc, out, err = run(capsys, "run", tmp_path / "art", "--input", tmp_path / "x.npy", "-o", tmp_path / "o.npy")
    assert rc == 0, err
    assert np.array_equal(np.load(tmp_path / "o.npy"), qm.runner()(x))
    m = load_artifact(tmp_path / "art").manifest
    assert "user.onnx (sha256 " in m["model"]["source"] and m["preprocess"]["mean"] == [0.0]


# --------------------------------------------------------------------------------------------
# Bad inputs and artifacts: one clear line, exit 3 (bad data) or 2 (bad options)


def test_wrong_input_shape(capsys, digits, tmp_path):
    np.save(tmp_path / "small.npy", np.zeros((4, 1, 4, 4), np.float32))
    line = expect_error(capsys, 3, "run", digits[1], "--input", tmp_path / "small.npy")
    assert "(1, 4, 4)" in line and "(1, 8, 8)" in line


def test_non_finite_input(capsys, digits, tmp_path):
    x = np.zeros((4, 1, 8, 8), np.float32)
    x[1, 0, 2, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    assert "NaN" in expect_error(capsys, 3, "run", digits[1], "--input", tmp_path / "nan.npy")


def test_missing_input_and_missing_artifact(capsys, digits, tmp_path):
    line = expect_error(capsys, 3, "run", digits[1], "--input", tmp_path / "nope.npy")
    assert "not found" in line and "nope.npy" in line
    line = expect_error(capsys, 3, "run", tmp_path / "no_art", "--input", tmp_path / "nope.npy")
    assert "artifact folder not found" in line


def test_sentences_for_an_image_model(capsys, digits, tmp_path):
    (tmp_path / "s.txt").write_text("hello world\n")
    line = expect_error(capsys, 2, "run", digits[1], "--input", tmp_path / "s.txt")
    assert "does not take sentences" in line


def test_corrupt_manifest(capsys, art_copy, tmp_path):
    (art_copy / "manifest.json").write_text("{ not json")
    line = expect_error(capsys, 3, "run", art_copy, "--input", tmp_path)
    assert "manifest.json" in line


def test_plan_changed_after_compiling(capsys, art_copy, digits, tmp_path):
    plan = tvmptq.QuantPlan.load(art_copy / "plan.npz")
    plan.stats["note"] = "edited"
    plan.save(art_copy / "plan.npz")
    np.save(tmp_path / "x.npy", digits[2])
    line = expect_error(capsys, 3, "run", art_copy, "--input", tmp_path / "x.npy")
    assert "plan.npz does not match the manifest" in line


def test_truncated_library(capsys, art_copy, digits, tmp_path):
    """Loading a damaged .so would crash the process (SIGBUS); its hash is checked first."""
    lib = art_copy / "model.so"
    lib.write_bytes(lib.read_bytes()[:5000])
    np.save(tmp_path / "x.npy", digits[2])
    line = expect_error(capsys, 3, "run", art_copy, "--input", tmp_path / "x.npy")
    assert "model.so does not match the manifest" in line


def test_missing_library(capsys, art_copy, tmp_path):
    (art_copy / "model.so").unlink()
    assert "model.so is missing" in expect_error(capsys, 3, "run", art_copy, "--input", tmp_path)


# --------------------------------------------------------------------------------------------
# Compile errors


def test_plan_that_does_not_lower_exits_4(capsys, digits, tmp_path):
    plan = tvmptq.QuantPlan.load(digits[0])
    layer = plan.layer("conv2d_4")
    layer.arrays["weight"] = layer.arrays["weight"][:, :8]
    plan.save(tmp_path / "bad.npz")
    line = expect_error(capsys, 4, "compile", MODEL, "--plan", tmp_path / "bad.npz", "-o", tmp_path / "a")
    assert "conv2d_4" in line and "does not match" in line


def test_plan_for_another_model_and_bad_target(capsys, digits, tmp_path):
    line = expect_error(capsys, 2, "compile", "efficientnet_lite0", "--plan", digits[0], "-o", tmp_path / "a")
    assert "digits_resnet" in line and "efficientnet_lite0" in line
    line = expect_error(capsys, 2, "compile", MODEL, "--plan", digits[0], "-o", tmp_path / "a",
                        "--target", "no_such_target")
    assert "no_such_target" in line
    assert not (tmp_path / "a").exists()


# --------------------------------------------------------------------------------------------
# Sentences (MiniLM)


def test_artifact_tokenizer_encodes_like_the_sentences_set(tmp_path):
    from tvmptq.deploy.inputs import encode_sentences, preprocessing_for
    from tvmptq.zoo.minilm import encode_sentences as zoo_encode
    pre = preprocessing_for(tvmptq.load("minilm_l6"))
    shutil.copyfile(pre.pop("tokenizer_source"), tmp_path / pre["tokenizer"])
    sentences = ["A man is playing a guitar.", "Return the number of items in a container. " * 40]
    # The second sentence is longer than the compiled 128 tokens: both paths cut it, and say so.
    with pytest.warns(UserWarning, match=r"1 of 2 sentences are longer than 128 tokens .*#1 'Return"):
        ids, mask = encode_sentences(tmp_path, sentences, pre)
    with pytest.warns(UserWarning, match="1 of 2 sentences are longer than 128 tokens"):
        want = zoo_encode(sentences)
    assert np.array_equal(ids, want[0].numpy()) and np.array_equal(mask, want[1].numpy())
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # short sentences: no warning
        encode_sentences(tmp_path, sentences[:1], pre)


@pytest.mark.slow
def test_minilm_sentences_round_trip(capsys, tmp_path):
    from tvmptq.deploy import compile_artifact
    from tvmptq.errors import ModelError
    model = tvmptq.load("minilm_l6")
    s = tvmptq.get_set("sentences")
    qm = tvmptq.quantize(model, tuple(a[:16] for a in s.calibration()), tvmptq.make_config(8, 8), progress=False)
    try:
        compile_artifact(model, qm.plan, tmp_path / "art", batch=4)
    except ModelError as err:
        pytest.skip(f"MiniLM does not lower to Relax yet: {str(err)[:200]}")
    sentences = ["A man is playing a guitar.", "The cat sleeps.", "Stocks fell.", "Return a list.", "Hello."]
    (tmp_path / "s.txt").write_text("\n".join(sentences) + "\n")
    rc, out, err = run(capsys, "run", tmp_path / "art", "--input", tmp_path / "s.txt", "-o", tmp_path / "e.npy")
    assert rc == 0, err
    from tvmptq.zoo.minilm import encode_sentences as zoo_encode
    want = qm.runner()(*(t.numpy() for t in zoo_encode(sentences)))
    # Float islands (LayerNorm, softmax, GELU, the final L2 normalization) run in TVM's float
    # kernels, not PyTorch's: equal up to float32 rounding, not bit for bit.
    got = np.load(tmp_path / "e.npy")
    assert got.shape == (5, 384) and "embedding: shape (5, 384)" in out
    np.testing.assert_allclose(got, want, atol=1e-5)
