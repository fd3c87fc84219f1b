"""ONNX export: checker + strict shape inference pass, and onnxruntime equals eager PyTorch (or
kiln's own quantized output) on fresh random inputs at two sequence lengths and a batch size
other than the traced one, for the CPU zoo models, both targets and several pipeline points."""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import kiln  # noqa: E402
from kiln.errors import ExportError  # noqa: E402
from kiln.ir import Graph  # noqa: E402
from kiln.ir.dtypes import f32  # noqa: E402
from kiln.ir.symbolic import symbol  # noqa: E402
from kiln.ir.types import TensorType  # noqa: E402
from kiln.passes.quantize import QuantScheme  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from cpu_zoo import build_zoo  # noqa: E402

TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def zoo() -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = build_zoo()
        return {name: (m, kw, kiln.compile(m, kw)) for name, (m, kw) in models.items()}


def _flat(out: object) -> list[np.ndarray]:
    if isinstance(out, torch.Tensor):
        return [out.numpy()]
    if isinstance(out, dict):
        return [v.numpy() for v in out.values() if isinstance(v, torch.Tensor)]
    return [t.numpy() for t in out if isinstance(t, torch.Tensor)]


def _check_file(path: str) -> onnx.ModelProto:
    onnx.checker.check_model(path, full_check=True)
    model = onnx.load(path)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return model


def _session(path: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _compare(sess: ort.InferenceSession, reference: object, seed: int, tol: dict = TOL) -> None:
    gen = torch.Generator().manual_seed(seed)
    for seq in (5, 13):  # neither is the traced length (32) nor the traced batch (2)
        ids = torch.randint(1, 1000, (3, seq), generator=gen)
        with torch.no_grad():
            want = _flat(reference(input_ids=ids))
        got = sess.run(None, {"input_ids": ids.numpy()})
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, **tol)


@pytest.mark.parametrize("target", ["standard", "onnxruntime"])
@pytest.mark.parametrize("after_pass", [None, "fuse_patterns"])
@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_zoo_export_matches_eager(zoo: dict, tmp_path: object, name: str, target: str, after_pass: str | None) -> None:
    model, kw, compiled = zoo[name]
    path = str(tmp_path / f"{name}.onnx")
    kiln.export_onnx(compiled, kw, path, target=target, after_pass=after_pass)
    _check_file(path)
    _compare(_session(path), model, seed=len(name))


def test_export_of_captured_graph_from_module_matches_eager(zoo: dict, tmp_path: object) -> None:
    model, kw, _ = zoo["gpt2"]
    path = str(tmp_path / "g.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kiln.export_onnx(model, kw, path, after_pass="captured")
    _check_file(path)
    _compare(_session(path), model, seed=3)


def test_symbolic_dims_are_named_dim_params(zoo: dict, tmp_path: object) -> None:
    _, kw, compiled = zoo["llama"]
    model = kiln.export_onnx(compiled, kw, str(tmp_path / "l.onnx"))
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["B", "S"]
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    assert [out_dims[0].dim_param, out_dims[1].dim_param, out_dims[2].dim_value] == ["B", "S", 1000]


def test_static_export_fixes_every_dim(zoo: dict, tmp_path: object) -> None:
    _, kw, compiled = zoo["llama"]
    model = kiln.export_onnx(compiled, kw, str(tmp_path / "s.onnx"), dynamic=False)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 32]
    assert not any(n.op_type == "Shape" for n in model.graph.node)
    sess = _session(str(tmp_path / "s.onnx"))
    np.testing.assert_allclose(sess.run(None, {"input_ids": kw["input_ids"].numpy()})[0], compiled(**kw).logits.numpy(), **TOL)


def test_onnxruntime_target_uses_contrib_ops(zoo: dict, tmp_path: object) -> None:
    _, kw, compiled = zoo["llama"]
    model = kiln.export_onnx(compiled, kw, str(tmp_path / "l.onnx"), target="onnxruntime")
    ops = {n.op_type for n in model.graph.node if n.domain == "com.microsoft"}
    assert ops == {"SkipSimplifiedLayerNormalization", "RotaryEmbedding", "MultiHeadAttention"}
    _, kw, compiled = zoo["bert"]
    model = kiln.export_onnx(compiled, kw, str(tmp_path / "b.onnx"), target="onnxruntime")
    assert {n.op_type for n in model.graph.node if n.domain == "com.microsoft"} == {"SkipLayerNormalization"}


SCHEMES = {
    "int8": ("int8", TOL),
    "int8_asym": (QuantScheme(weights="int8", symmetric=False), TOL),
    "int4": (QuantScheme(weights="int4", group_size=32), TOL),
    "int4_asym": (QuantScheme(weights="int4", group_size=64, symmetric=False), TOL),
    # per-token activation rounding: x / s may land on the other side of a .5 tie in ORT's
    # arithmetic, moving one product by one quantization step
    "w8a8": ("w8a8", dict(rtol=1e-4, atol=2e-2)),
}


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_quantized_export_matches_kiln(zoo: dict, tmp_path: object, scheme: str) -> None:
    model, kw, _ = zoo["llama"]
    quant, tol = SCHEMES[scheme]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = kiln.compile(model, kw, options=kiln.CompileOptions(quantization=quant))
    qops = {k for k in compiled.graph.op_counts() if k.startswith("linear_")}
    assert qops, "the scheme quantized nothing"
    for target in ("standard", "onnxruntime"):
        path = str(tmp_path / f"{scheme}_{target}.onnx")
        m = kiln.export_onnx(compiled, kw, path, target=target)
        _check_file(path)
        _compare(_session(path), compiled, seed=7, tol=tol)
        if target == "onnxruntime" and scheme.startswith("int4"):
            assert any(n.op_type == "MatMulNBits" for n in m.graph.node)


def test_fp8_export_needs_opset_19_and_matches_kiln(zoo: dict, tmp_path: object) -> None:
    model, kw, _ = zoo["llama"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = kiln.compile(model, kw, options=kiln.CompileOptions(quantization="fp8"))
    with pytest.raises(ExportError, match="linear_fp8"):
        kiln.export_onnx(compiled, kw, str(tmp_path / "f18.onnx"))
    assert not os.listdir(tmp_path)
    path = str(tmp_path / "f19.onnx")
    kiln.export_onnx(compiled, kw, path, opset=19)
    _check_file(path)
    _compare(_session(path), compiled, seed=9, tol=SCHEMES["w8a8"][1])  # per-token rounding, as W8A8


def _graph_with(op: str, attrs: dict) -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType(f32, (symbol("N"), 32)))
    w = g.add_constant("layer/../weight", torch.randn(32, 32))
    y = g.call("linear", x, w)
    z = g.add_node(op, [y], attrs, out_types=[y.type]).output
    g.outputs = [z]
    return g


def test_unmapped_op_raises_naming_op_and_node_and_leaves_no_file(tmp_path: object) -> None:
    from kiln.backends.onnx.export import graph_to_onnx
    from kiln.backends.onnx.write import write_model

    g = _graph_with("aten.erfinv.default", {"targs": "t"})
    with pytest.raises(ExportError) as info:
        write_model(graph_to_onnx(g), str(tmp_path / "bad.onnx"), None)
    assert "aten.erfinv.default" in str(info.value) and "node %1" in str(info.value)
    assert info.value.op == "aten.erfinv.default"
    assert os.listdir(tmp_path) == []


def test_unmapped_op_through_export_onnx_leaves_no_file(tmp_path: object) -> None:
    class Odd(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.erfinv(torch.tanh(x)) + 1

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ExportError, match="erfinv"):
            kiln.export_onnx(Odd(), (torch.randn(3, 4),), str(tmp_path / "odd.onnx"))
    assert os.listdir(tmp_path) == []


def test_external_data_is_written_inside_the_output_dir_with_sanitized_names(tmp_path: object) -> None:
    from kiln.backends.onnx.export import graph_to_onnx
    from kiln.backends.onnx.write import write_model

    g = _graph_with("relu", {})
    out = tmp_path / "out"
    write_model(graph_to_onnx(g), str(out / "m.onnx"), True)
    files = sorted(os.listdir(out))
    assert files == ["m.layer_._weight.bin", "m.onnx"]
    model = onnx.load(str(out / "m.onnx"), load_external_data=False)
    locs = [e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"]
    assert locs == ["m.layer_._weight.bin"] and all("/" not in x for x in locs)
    onnx.checker.check_model(str(out / "m.onnx"), full_check=True)
    x = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
    want = torch.relu(torch.from_numpy(x) @ g.constant_data["layer/../weight"].T).numpy()
    np.testing.assert_allclose(_session(str(out / "m.onnx")).run(None, {"x": x})[0], want, **TOL)


def test_cli_export_writes_a_checked_model(tmp_path: object, capsys: object) -> None:
    from kiln.cli import main

    path = str(tmp_path / "tiny.onnx")
    assert main(["export", "--model", "tiny-gpt", "--out", path, "--seq", "8", "--target", "onnxruntime"]) == 0
    assert "wrote" in capsys.readouterr().out
    _check_file(path)


@pytest.mark.parametrize("target", ["standard", "onnxruntime"])
def test_kv_cache_decoder_greedy_tokens_equal_kiln_llm(tmp_path: object, target: str) -> None:
    from kiln.backends.onnx.decoder import export_decoder, greedy_generate
    from kiln.runtime.builtin import load_builtin

    model = load_builtin("tiny-llama", dtype="float32").model
    path = str(tmp_path / "step.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = export_decoder(model, path, target=target)
    assert [i.name for i in m.graph.input] == ["input_ids", "past"]
    _check_file(path)
    prompt = torch.randint(3, model.config.vocab_size, (6,), generator=torch.Generator().manual_seed(5)).tolist()
    got = greedy_generate(_session(path), model.config, prompt, 8)
    llm = kiln.LLM("tiny-llama", dtype="float32", device="cpu")
    want = llm.generate([prompt], kiln.SamplingParams(max_tokens=8, temperature=0.0))[0].outputs[0].token_ids
    assert got == list(want)
