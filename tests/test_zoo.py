"""The model zoo (EfficientNet-Lite0, MiniLM, digits ResNet) and the user-model wrappers."""
import contextlib
import dataclasses
import importlib.util
import inspect
import io
import json
import os
import subprocess
import sys
from pathlib import Path

# sentence-transformers (the MiniLM reference) must never try the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import onnx.helper as oh
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tvmptq.errors import ModelError, ShapeError, UnsupportedOpError
from tvmptq.zoo import ZooModel, from_module, from_onnx, get_model, list_models

REPO = Path(__file__).resolve().parents[1]


# ---- registry ---------------------------------------------------------------------------------------


def test_registry_lists_the_builtin_models():
    assert {"efficientnet_lite0", "minilm_l6", "digits_resnet"} <= set(list_models())
    entry = get_model("digits_resnet")
    assert entry.task == "classification" and entry.input_names == ("input",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.name = "other"


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ModelError) as err:
        get_model("resnet50")
    assert "resnet50" in str(err.value) and "efficientnet_lite0" in str(err.value) and err.value.exit_code == 4


def test_zoo_entry_rejects_unknown_task():
    with pytest.raises(ModelError):
        ZooModel("x", "detection", build=nn.Identity, example_inputs=lambda b: (torch.zeros(b),), input_names=("x",))


# ---- EfficientNet-Lite0 ---------------------------------------------------------------------------


def test_efficientnet_recognises_cat_and_espresso():
    from skimage import data

    from tvmptq.zoo.efficientnet import preprocess_image

    entry = get_model("efficientnet_lite0")
    model = entry.build()
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert entry.example_inputs(2)[0].shape == (2, 3, 224, 224)
    photos = torch.cat([preprocess_image(data.chelsea()), preprocess_image(data.coffee())])
    with torch.no_grad():
        top1 = model(photos).argmax(dim=1).tolist()
    assert top1 == [282, 967]  # ImageNet "tiger cat", "espresso"


# ---- MiniLM -----------------------------------------------------------------------------------------


def _real_sentences() -> list[str]:
    """First docstring lines of some standard-library functions: real English, not written here."""
    import collections
    import json as json_module
    import os.path
    import re
    import shutil
    import textwrap

    objects = [json_module.dumps, json_module.loads, os.path.join, os.path.exists, re.sub, re.split,
               shutil.copyfile, shutil.rmtree, textwrap.dedent, textwrap.wrap, collections.Counter, sorted]
    return [inspect.getdoc(obj).splitlines()[0].strip() for obj in objects]


PAIRS = ["A man is playing a guitar.", "A person plays the guitar.",
         "A cat sits on the mat.", "A kitten is resting on a rug.",
         "Stock prices fell sharply today.", "Shares dropped steeply this afternoon."]


@pytest.fixture(scope="module")
def minilm():
    return get_model("minilm_l6").build()


def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    from tvmptq.zoo.minilm import encode_sentences, model_dir

    sentences = _real_sentences() + PAIRS
    input_ids, attention_mask = encode_sentences(sentences)
    assert input_ids.shape == attention_mask.shape == (len(sentences), 128) and input_ids.dtype == torch.int64
    with torch.no_grad():
        ours = minilm(input_ids, attention_mask)

    with contextlib.redirect_stderr(io.StringIO()):  # its weight-loading progress bar
        reference_model = SentenceTransformer(str(model_dir()), device="cpu")
    reference_model.max_seq_length = 128  # the package default is 256; we tokenise to 128
    reference = torch.from_numpy(reference_model.encode(sentences, normalize_embeddings=True))
    assert ours.shape == (len(sentences), 384)
    assert F.cosine_similarity(ours, reference).min() > 0.99999
    assert (ours - reference).abs().max() < 1e-4


def test_minilm_similar_pairs_are_nearest(minilm):
    from tvmptq.zoo.minilm import encode_sentences

    with torch.no_grad():
        embeddings = minilm(*encode_sentences(PAIRS))
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-1)
    partner = [i ^ 1 for i in range(len(PAIRS))]  # 0<->1, 2<->3, 4<->5
    assert similarity.argmax(dim=1).tolist() == partner
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(len(PAIRS)))


def test_minilm_exports_with_static_shapes(minilm):
    entry = get_model("minilm_l6")
    for batch in (1, 8):
        inputs = entry.example_inputs(batch)
        assert inputs[0].shape == (batch, 128)
        program = torch.export.export(minilm, inputs)
        with torch.no_grad():
            assert torch.allclose(program.module()(*inputs), minilm(*inputs), atol=1e-6)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"aten.matmul.default", "aten.softmax.int", "aten.gelu.default", "aten.layer_norm.default"} <= targets


# ---- digits ResNet ----------------------------------------------------------------------------------


def test_digits_weights_reproduce_recorded_accuracy():
    from tvmptq.data.digits import load_digits_split
    from tvmptq.zoo.digits_resnet import count_correct, recorded_training

    _, _, x_test, y_test = (torch.tensor(np.array(a)) for a in load_digits_split())
    record = recorded_training()
    correct = count_correct(get_model("digits_resnet").build(), x_test, y_test)
    assert correct == record["test_correct"] and len(x_test) == record["test_images"]
    assert correct / len(x_test) == record["test_accuracy"]


@pytest.mark.slow
def test_digits_training_is_reproducible(tmp_path):
    from tvmptq.zoo.digits_resnet import recorded_training

    subprocess.run([sys.executable, str(REPO / "scripts" / "train_digits.py"), "--out-dir", str(tmp_path)],
                   check=True, cwd=REPO, timeout=900)
    retrained = json.loads((tmp_path / "digits_resnet.json").read_text())
    assert abs(retrained["test_accuracy"] - recorded_training()["test_accuracy"]) <= 0.005


# ---- user PyTorch modules -----------------------------------------------------------------------------


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.dropout = nn.Dropout(0.5)

    def forward(self, features, scale):
        return self.dropout(self.fc(features)) * scale


def test_from_module_wraps_and_checks():
    module = TwoInputs().train()
    entry = from_module(module, (torch.randn(2, 4), torch.ones(2, 1)), name="two", task="embedding")
    assert entry.name == "two" and entry.task == "embedding" and entry.input_names == ("features", "scale")
    assert entry.build() is module and not module.training
    features, scale = entry.example_inputs(5)  # rows cycle through the two examples
    assert features.shape == (5, 4) and scale.shape == (5, 1) and torch.equal(features[2], features[0])

    with pytest.raises(ModelError, match="does not run"):
        from_module(TwoInputs(), torch.randn(2, 5))  # wrong feature size
    with pytest.raises(ModelError):
        from_module(lambda x: x, torch.randn(2, 4))
    with pytest.raises(ShapeError):
        from_module(TwoInputs(), (torch.randn(2, 4), torch.ones(3, 1)))


# ---- user ONNX files ------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = F.relu6(self.depthwise(x)) + x[:, :, ::2, ::2]
        return self.fc(x.reshape(x.shape[0], -1))  # batch-dependent reshape: a Shape chain in ONNX


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _export_onnx(model, inputs, path, dynamo, **kwargs):
    # The exporters print progress and "torchvision is not installed" notices.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, inputs, str(path), dynamo=dynamo, **kwargs)
    return path


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_onnx_small_cnn_converts_matches_and_exports(tmp_path, dynamo):
    model, x = _small_cnn(), torch.randn(1, 3, 8, 8)
    path = _export_onnx(model, (x,), tmp_path / "small_cnn.onnx", dynamo)
    entry = from_onnx(path)
    assert entry.name == "small_cnn" and len(entry.input_names) == 1
    assert entry.example_inputs(1)[0].shape == (1, 3, 8, 8)
    converted = entry.build()
    batch = torch.randn(3, 3, 8, 8)  # another batch size than the exported one
    with torch.no_grad():
        assert (converted(x) - model(x)).abs().max() < 1e-5
        assert (converted(batch) - model(batch)).abs().max() < 1e-5
    program = torch.export.export(converted, (batch,))
    with torch.no_grad():
        assert (program.module()(batch) - model(batch)).abs().max() < 1e-5


def test_onnx_dynamic_dims_need_shapes(tmp_path):
    model, x = _small_cnn(), torch.randn(2, 3, 8, 8)
    path = _export_onnx(model, (x,), tmp_path / "dyn.onnx", False,
                        input_names=["image"], dynamic_axes={"image": {0: "batch"}})
    entry = from_onnx(path)  # a dynamic batch alone needs no shape
    assert entry.batch is None and entry.example_inputs(1)[0].shape == (1, 3, 8, 8)
    with torch.no_grad():
        assert (entry.build()(x) - model(x)).abs().max() < 1e-5
    spatial = _export_onnx(model, (x,), tmp_path / "dyn_hw.onnx", False, input_names=["image"],
                           dynamic_axes={"image": {0: "batch", 2: "h", 3: "w"}})
    with pytest.raises(ShapeError, match="--input-shape image="):
        from_onnx(spatial)
    entry = from_onnx(path, input_shapes={"image": (2, 3, 8, 8)})
    with torch.no_grad():
        assert (entry.build()(x) - model(x)).abs().max() < 1e-5
    with pytest.raises(ShapeError):
        from_onnx(path, input_shapes={"image": (2, 3, 9, 9)})  # contradicts the static dims


def test_onnx_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        from_onnx(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 this is not a protobuf" * 4)
    with pytest.raises(ModelError, match="cannot read"):
        from_onnx(corrupt)
    # Parses, but fails the checker: the node reads a tensor nothing defines.
    graph = oh.make_graph([oh.make_node("Relu", ["undefined"], ["y"])], "g",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    invalid = tmp_path / "invalid.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), str(invalid))
    with pytest.raises(ModelError, match="invalid ONNX"):
        from_onnx(invalid)


def _save_two_node_model(path, second_node, opsets, x_shape=(2, 3, 3), y_shape=(2,)):
    graph = oh.make_graph([oh.make_node("Relu", ["x"], ["r"], name="relu0"), second_node], "g",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x_shape))],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(y_shape))])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid(d, v) for d, v in opsets]), str(path))
    return path


def test_onnx_unsupported_ops_are_named(tmp_path):
    custom = _save_two_node_model(tmp_path / "custom.onnx",
                                  oh.make_node("FancyOp", ["r"], ["y"], domain="com.example", name="fancy1"),
                                  [("", 17), ("com.example", 1)], y_shape=(2, 3, 3))
    with pytest.raises(UnsupportedOpError) as err:
        from_onnx(custom)
    assert "com.example::FancyOp" in str(err.value) and "fancy1" in str(err.value) and "opset 1" in str(err.value)

    # A standard op onnx2torch has no converter for.
    det = _save_two_node_model(tmp_path / "det.onnx", oh.make_node("Det", ["r"], ["y"], name="det1"), [("", 17)])
    with pytest.raises(UnsupportedOpError) as err:
        from_onnx(det)
    assert "Det" in str(err.value) and "det1" in str(err.value) and "opset 17" in str(err.value)


def test_onnx_conversion_time_refusal_is_named(tmp_path):
    # onnx2torch's Clip converter accepts only constant bounds; this one comes from the graph input.
    graph = oh.make_graph([oh.make_node("ReduceMin", ["x"], ["low"], keepdims=0, name="min0"),
                           oh.make_node("Clip", ["x", "low"], ["y"], name="clip1")], "g",
                          [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])])
    path = tmp_path / "clip.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)]), str(path))
    with pytest.raises(UnsupportedOpError) as err:
        from_onnx(path)
    assert "Clip" in str(err.value) and "clip1" in str(err.value)


def test_onnx2torch_import_leaves_torchvision_absent():
    from tvmptq.zoo.user import _onnx2torch

    installed = importlib.util.find_spec("torchvision") is not None
    _onnx2torch()
    if installed:
        pytest.skip("a real torchvision is installed here")
    # The stand-in lived only during the import: other libraries still see no torchvision...
    assert "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None
    # ...while onnx2torch's NonMaxSuppression converter reports it clearly if a model needs it.
    from onnx2torch.node_converters import nms

    with pytest.raises(UnsupportedOpError, match="torchvision"):
        nms.torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("zoo_name", ["digits_resnet", "efficientnet_lite0", "minilm_l6"])
def test_onnx_round_trip_of_zoo_models(tmp_path, zoo_name, dynamo):
    """Zoo model -> ONNX (torch's default opset) -> onnx2torch -> torch.export with a dynamic batch."""
    from tvmptq.quant.graph import export_model

    zoo_entry = get_model(zoo_name)
    model = zoo_entry.build()
    path = _export_onnx(model, zoo_entry.example_inputs(1), tmp_path / f"{zoo_name}.onnx", dynamo)
    entry = from_onnx(path)
    exported = export_model(entry.build(), entry.example_inputs(1))
    inputs = zoo_entry.example_inputs(3)
    with torch.no_grad():
        assert (exported(*inputs) - model(*inputs)).abs().max() < 1e-4
