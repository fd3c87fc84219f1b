"""ONNX import: small models built with onnx.helper (and one from torch.onnx.export) run through
kiln and compared with onnxruntime on fresh random inputs; hostile external-data fixtures are
refused before any data is read."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.errors import OnnxImportError, UnsafeExternalDataError
from kiln.frontend.onnx_import import onnx_to_graph

ort = pytest.importorskip("onnxruntime")
F32 = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=18) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    onnx.checker.check_model(m, full_check=True)
    return m


def _init(name: str, a: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(a, name)


def _ort(m: onnx.ModelProto, feeds: dict) -> list:
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _check(m: onnx.ModelProto, feeds: dict, tol: float = 1e-5) -> kiln.OnnxModel:
    km = kiln.import_onnx(m)
    got = km.run(None, feeds)
    want = _ort(m, feeds)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
    return km


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _mlp() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], alpha=0.5, beta=2.0),
    ]
    inits = [_init("w1", _rand(16, 8, seed=1)), _init("b1", _rand(16, seed=2)), _init("w2", _rand(16, 4, seed=3)), _init("b2", _rand(1, 4, seed=4))]
    return _model(nodes, [helper.make_tensor_value_info("x", F32, ["batch", 8])], [helper.make_tensor_value_info("y", F32, ["batch", 4])], inits)


def test_mlp_gemm_relu_matches_onnxruntime_for_every_batch_size():
    km = _check(_mlp(), {"x": _rand(3, 8, seed=5)})
    for b in (1, 7):  # one plan serves every batch size
        x = _rand(b, 8, seed=b)
        np.testing.assert_allclose(km.run(None, {"x": x})[0], _ort(_mlp(), {"x": x})[0], rtol=1e-5, atol=1e-5)
    assert len(km._entries) == 1
    assert "linear" in km.graph.op_counts() or "linear_add" in str(km.graph)


def test_layernorm_softmax_block_matches_onnxruntime():
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], axis=-1, epsilon=1e-5),
        helper.make_node("MatMul", ["n", "w"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("ReduceMean", ["p", "axes"], ["y"], keepdims=0),
    ]
    inits = [_init("g", _rand(32, seed=1)), _init("b", _rand(32, seed=2)), _init("w", _rand(32, 32, seed=3)), _init("axes", np.array([1], np.int64))]
    m = _model(nodes, [helper.make_tensor_value_info("x", F32, ["B", "S", 32])], [helper.make_tensor_value_info("p", F32, ["B", "S", 32]), helper.make_tensor_value_info("y", F32, ["B", 32])], inits)
    km = _check(m, {"x": _rand(2, 5, 32, seed=4)})
    assert "layer_norm" in str(onnx_to_graph(m).graph)
    _check(m, {"x": _rand(1, 9, 32, seed=6)})
    del km


def test_shape_arithmetic_folds_into_symbolic_reshape_transpose_slice():
    i64 = TensorProto.INT64
    c = lambda name, v: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(v, np.int64), name))  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"]),
        c("i0", [0]), c("i1", [1]), c("heads", [4]), c("minus1", [-1]),
        helper.make_node("Gather", ["shp", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["shp", "i1"], ["s"], axis=0),
        helper.make_node("Concat", ["b", "s", "heads", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),          # [B, S, 4, 8]
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3]),  # [B, 4, S, 8]
        c("st", [1, -3]), c("en", [2**62, 2**62]), c("ax", [1, 3]), c("sp", [1, 2]),
        helper.make_node("Slice", ["t", "st", "en", "ax", "sp"], ["y"]),  # [B, 3, S, 2]
        helper.make_node("Shape", ["y"], ["ys"]),
    ]
    m = _model(nodes, [helper.make_tensor_value_info("x", F32, ["B", "S", 32])],
               [helper.make_tensor_value_info("y", F32, ["B", 3, "S", 2]), helper.make_tensor_value_info("ys", i64, [4])])
    g = onnx_to_graph(m).graph
    assert "gather" not in str(g) and "reshape" in str(g)  # the Shape arithmetic never reached the graph
    assert "f32[B, 3, S, 2]" in str(g)
    _check(m, {"x": _rand(2, 5, 32, seed=1)})
    _check(m, {"x": _rand(3, 6, 32, seed=2)})


def test_torch_onnx_export_of_a_small_module_matches_onnxruntime():
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(16, 32)
            self.norm = torch.nn.LayerNorm(32)
            self.out = torch.nn.Linear(32, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.norm(torch.nn.functional.gelu(self.fc(x)))
            return torch.softmax(self.out(h).transpose(0, 1), dim=-1)

    torch.manual_seed(0)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Block().eval(), (torch.randn(3, 16),), f, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    m = onnx.load_from_string(f.getvalue())
    _check(m, {"x": _rand(5, 16, seed=3)}, tol=1e-5)


def test_unsupported_op_error_names_op_type_and_node():
    m = _model([helper.make_node("Unique", ["x"], ["y"], name="unique_1")],
               [helper.make_tensor_value_info("x", F32, [6])], [helper.make_tensor_value_info("y", F32, [None])])
    with pytest.raises(OnnxImportError, match=r"Unique node 'unique_1'"):
        kiln.import_onnx(m)


def test_reshape_shape_fed_as_input_specialises_on_its_value():
    m = _model([helper.make_node("Reshape", ["x", "shape"], ["y"])],
               [helper.make_tensor_value_info("x", F32, [2, 6]), helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
               [helper.make_tensor_value_info("y", F32, [None, None])])
    km = kiln.import_onnx(m)
    x = _rand(2, 6)
    assert km.run(None, {"x": x, "shape": np.array([3, 4])})[0].shape == (3, 4)
    assert km.run(None, {"x": x, "shape": np.array([-1, 2])})[0].shape == (6, 2)
    assert len(km._entries) == 2


# --- external data security --------------------------------------------------------------------
def _external_model(tmp_path, location: str) -> str:
    """A model whose weight claims to live at `location` (relative to the model's directory)."""
    w = numpy_helper.from_array(_rand(4, seed=1), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [helper.make_tensor_value_info("x", F32, [4])],
                          [helper.make_tensor_value_info("y", F32, [4])], initializer=[w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    path = model_dir / "m.onnx"
    path.write_bytes(m.SerializeToString())
    return str(path)


def _secret(tmp_path) -> str:
    p = tmp_path / "secret.bin"
    p.write_bytes(_rand(4, seed=9).tobytes())
    return str(p)


def test_external_data_inside_model_dir_loads(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (tmp_path / "model" / "weights.bin").write_bytes(_rand(4, seed=1).tobytes())
    x = _rand(4, seed=2)
    np.testing.assert_allclose(kiln.import_onnx(path).run(None, {"x": x})[0], x + _rand(4, seed=1), rtol=1e-6)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "symlinked_dir"])
def test_external_data_escaping_model_dir_is_refused_before_reading(tmp_path, monkeypatch, kind):
    secret = _secret(tmp_path)
    if kind == "dotdot":
        path = _external_model(tmp_path, "../secret.bin")
    elif kind == "absolute":
        path = _external_model(tmp_path, secret)
    elif kind == "symlink":
        path = _external_model(tmp_path, "link.bin")
        os.symlink(secret, tmp_path / "model" / "link.bin")
    else:
        path = _external_model(tmp_path, "sub/secret.bin")
        os.symlink(tmp_path, tmp_path / "model" / "sub")
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (opened.append(os.fspath(f)), real_open(f, *a, **k))[1])
    with pytest.raises(UnsafeExternalDataError, match="outside the model directory|not a relative path"):
        kiln.import_onnx(path)
    assert not any(os.path.realpath(p) == os.path.realpath(secret) for p in opened)


def test_unloaded_external_data_in_a_modelproto_is_refused(tmp_path, monkeypatch):
    path = _external_model(tmp_path, "weights.bin")
    m = onnx.load(path, load_external_data=False)
    monkeypatch.chdir(tmp_path / "model")
    (tmp_path / "model" / "weights.bin").write_bytes(_rand(4, seed=1).tobytes())
    with pytest.raises(UnsafeExternalDataError, match="import the model from its file path"):
        kiln.import_onnx(m)
