"""2:4 semi-structured sparse linears: structure detection, when the launcher offers the
"sparse24" candidate, and (on CUDA) PyTorch's sparse kernels against dense F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import kiln  # noqa: E402
from kiln.backends.triton import matmul, sparse24  # noqa: E402
from kiln.backends.triton.matmul import TORCH, LinearLauncher, torch_linear  # noqa: E402
from kiln.backends.triton.sparse24 import SPARSE24, SparseWeight, fits, is_two_four  # noqa: E402
from kiln.passes import PruneScheme  # noqa: E402
from kiln.passes.prune import prune_tensor  # noqa: E402

from conftest import rel_err  # noqa: E402

TWO_FOUR = PruneScheme(pattern="2:4")


def _w(n: int, k: int, seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    return (torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) + 0.1).to(dtype).to(device)


def _pruned(n: int, k: int, seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    return prune_tensor(_w(n, k, seed), TWO_FOUR).to(dtype).to(device)


# --- structure and eligibility (CPU) --------------------------------------------------------


def test_two_four_pruned_weights_are_detected_also_after_concatenation_along_n() -> None:
    a, b = _pruned(8, 16, 1), _pruned(12, 16, 2)
    assert is_two_four(a) and is_two_four(b)
    assert is_two_four(torch.cat([a, b]))  # fuse_projections' fused QKV / gate-up weight
    a[3] = 0  # extra zeros keep the structure
    assert is_two_four(a) and is_two_four(a.to(torch.bfloat16))


def test_dense_unstructured_and_misaligned_weights_are_not_two_four() -> None:
    assert not is_two_four(_w(8, 16, 3))
    w = _pruned(8, 16, 4)
    w[5, 9] = 1.0  # one group of 4 with three nonzeros
    assert not is_two_four(w)
    unstructured = prune_tensor(_w(8, 16, 5), PruneScheme(sparsity=0.5))
    assert (unstructured == 0).float().mean() == 0.5 and not is_two_four(unstructured)
    assert not is_two_four(torch.zeros(8, 18))  # K not a multiple of 4
    assert not is_two_four(torch.zeros(16)) and not is_two_four(torch.zeros(0, 16))


@pytest.mark.parametrize("cls", ["SparseSemiStructuredTensorCUTLASS", "SparseSemiStructuredTensorCUSPARSELT"])
def test_shape_and_dtype_limits_follow_torchs_table(cls: str) -> None:
    backend = getattr(torch.sparse, cls, None)
    if backend is None:
        pytest.skip(f"this torch has no {cls}")
    for n, k in ((2048, 2048), (5632, 2048), (11264, 2048), (2048, 5632)):
        assert fits((n, k), torch.bfloat16, backend) and fits((n, k), torch.float16, backend)
    assert not fits((2048, 2048), torch.float32, backend)  # fp32 would not be IEEE-exact
    assert not fits((2048, 2040), torch.bfloat16, backend) and not fits((2040, 2048), torch.bfloat16, backend)
    assert not fits((8, 2048), torch.bfloat16, backend) and not fits((2048, 2048), torch.bfloat16, None)


def test_cpu_weights_are_never_eligible() -> None:
    assert not sparse24.eligible(_pruned(64, 128, 6, torch.bfloat16))


def test_launcher_offers_sparse24_only_for_eligible_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = LinearLauncher("none", False, False)
    pruned, dense = _pruned(64, 128, 7, torch.bfloat16), _w(64, 128, 8, torch.bfloat16)
    for m in (1, 64):  # on CPU: never, whatever the weight
        assert SPARSE24 not in launcher.candidates(m, pruned) and SPARSE24 not in launcher.candidates(m)
    monkeypatch.setattr(sparse24, "eligible", is_two_four)  # as if the weight lived on CUDA
    for m in (1, 64):
        cands = LinearLauncher("none", False, False).candidates(m, pruned)
        assert cands[-2:] == [SPARSE24, TORCH]  # PyTorch stays the last resort
        assert SPARSE24 not in LinearLauncher("none", False, False).candidates(m, dense)


def test_two_four_weights_get_their_own_autotune_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []

    def fake_choose(key: str, candidates: dict, on_cuda: bool) -> str:
        calls.append((key, list(candidates)))
        return TORCH

    monkeypatch.setattr(matmul, "choose", fake_choose)
    monkeypatch.setattr(sparse24, "eligible", is_two_four)
    x = _w(4, 128, 9, torch.bfloat16)
    for w in (_pruned(64, 128, 10, torch.bfloat16), _w(64, 128, 11, torch.bfloat16)):
        LinearLauncher("none", False, False)(x, w)
    (sparse_key, sparse_cands), (dense_key, dense_cands) = calls
    assert sparse_key == dense_key + "|2:4"
    assert SPARSE24 in sparse_cands and SPARSE24 not in dense_cands


def test_weight_structure_is_checked_once_per_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[torch.Tensor] = []
    monkeypatch.setattr(sparse24, "eligible", lambda w: checked.append(w) or False)
    cache, w1, w2 = SparseWeight(), _pruned(8, 16, 12), _pruned(8, 16, 13)
    for _ in range(3):
        cache.usable(w1)
    cache.usable(w2)
    assert len(checked) == 2 and checked[0] is w1 and checked[1] is w2


def test_pinned_sparse24_falls_back_to_dense_pytorch_where_it_cannot_run() -> None:
    x, w, r, b = _w(5, 128, 14), _pruned(64, 128, 15), _w(5, 64, 16), _w(1, 64, 17)[0]
    launcher = LinearLauncher("silu", True, True, config=SPARSE24)
    got = launcher(x, w, r, b)
    assert torch.allclose(got, torch_linear(x, w, b, r.clone(), "silu"), atol=1e-6)
    assert launcher.sparse.packed is None  # CPU: never compressed


def test_unknown_config_names_sparse24_among_the_known() -> None:
    with pytest.raises(ValueError, match="sparse24"):
        LinearLauncher("none", False, False, config="sparse_2x")


# --- CUDA ---------------------------------------------------------------------------------

def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, r: torch.Tensor | None, act: str) -> torch.Tensor:
    """The dense result in fp32 on the same (pruned) weight."""
    return torch_linear(x.float(), w.float(), None if b is None else b.float(), None if r is None else r.float(), act)


@pytest.mark.parametrize("epilogue", ["plain", "bias_silu_residual"])
@pytest.mark.parametrize("nk", [(2048, 2048), (5632, 2048)])
@pytest.mark.parametrize("m", [1, 8, 64, 512])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sparse24_matches_dense_linear_on_the_pruned_weight(m: int, nk: tuple, epilogue: str) -> None:
    n, k = nk
    dt = torch.bfloat16
    x, w = _w(m, k, 20, dt, "cuda"), _pruned(n, k, 21, dt, "cuda") / k**0.5
    full = epilogue != "plain"
    b, r = (_w(1, n, 22, dt, "cuda")[0], _w(m, n, 23, dt, "cuda")) if full else (None, None)
    act = "silu" if full else "none"
    launcher = LinearLauncher(act, full, full, config=SPARSE24)
    assert launcher.sparse.usable(w), f"{sparse24.backend()} refused a {tuple(w.shape)} bf16 2:4 weight"
    got = launcher(x, w, *([r, b] if full else []))
    assert launcher.sparse.packed is not None, "ran dense PyTorch, not the sparse kernels"
    assert got.shape == (m, n) and got.dtype == dt and got.is_contiguous()
    assert rel_err(got.float(), _reference(x, w, b, r, act)) <= 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sparse24_runs_fp16_leading_dims_and_replays_in_a_cuda_graph() -> None:
    x, w = _w(2 * 3, 1024, 30, torch.float16, "cuda").view(2, 3, 1024), _pruned(512, 1024, 31, torch.float16, "cuda") / 32
    launcher = LinearLauncher("relu", False, False, config=SPARSE24)
    assert rel_err(launcher(x, w).float(), _reference(x, w, None, None, "relu")) <= 1e-2  # compresses, outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = launcher(x, w)
    x.copy_(_w(6, 1024, 32, torch.float16, "cuda").view(2, 3, 1024))
    graph.replay()
    torch.cuda.synchronize()
    assert out.shape == (2, 3, 512) and rel_err(out.float(), _reference(x, w, None, None, "relu")) <= 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_launcher_offers_sparse24_for_two_four_weights_only() -> None:
    launcher = LinearLauncher("none", False, False)
    assert SPARSE24 in launcher.candidates(64, _pruned(2048, 2048, 40, torch.bfloat16, "cuda"))
    assert SPARSE24 not in LinearLauncher("none", False, False).candidates(64, _w(2048, 2048, 41, torch.bfloat16, "cuda"))
    assert SPARSE24 not in LinearLauncher("none", False, False).candidates(64, _pruned(2048, 2048, 42, torch.float32, "cuda"))


class _MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(256, 512), torch.nn.Linear(512, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.silu(self.up(x)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compiled_two_four_mlp_runs_sparse_kernels_and_matches_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both linears (up+SiLU, down+residual) are 2:4 after the pass; the autotuner is made to
    prefer sparse24 so the compiled plan really runs it, CUDA-graph replays included."""
    keys: list[str] = []

    def prefer_sparse(key: str, candidates: dict, on_cuda: bool) -> str:
        keys.append(key)
        return SPARSE24 if SPARSE24 in candidates else TORCH

    monkeypatch.setattr(matmul, "choose", prefer_sparse)
    torch.manual_seed(0)
    model = _MLP().eval().to("cuda", torch.bfloat16)
    fn = kiln.compile(model, options=kiln.CompileOptions(pruning=TWO_FOUR))
    pruned = _MLP().eval().to("cuda", torch.bfloat16)  # eager on the same pruned weights
    with torch.no_grad():
        for lin, src in ((pruned.up, model.up), (pruned.down, model.down)):
            lin.weight.copy_(prune_tensor(src.weight, TWO_FOUR))
            lin.bias.copy_(src.bias)
    for step in range(4):  # repeated shapes: the plan captures and replays a CUDA graph
        x = torch.randn(4, 16, 256, device="cuda", dtype=torch.bfloat16, generator=torch.Generator("cuda").manual_seed(step))
        with torch.no_grad():
            assert rel_err(fn(x).float(), pruned(x).float()) <= 1e-2
    assert sum(key.endswith("|2:4") for key in keys) >= 2, keys
