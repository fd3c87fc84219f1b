"""CUDA checks (skipped without a GPU; run through scripts/gpu_check.sh on the device machine)."""

from __future__ import annotations

import pytest
import torch

import kiln

from conftest import rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_cuda_model_matches_eager_per_dtype(saved_models: dict, kind: str, dtype: torch.dtype) -> None:
    import copy

    model = copy.deepcopy(saved_models[kind]).to("cuda", dtype)
    fn = kiln.compile(model)
    gen = torch.Generator().manual_seed(11)
    for seq in (16, 40):
        x = torch.randint(1, 500, (2, seq), generator=gen).cuda()
        out = fn(input_ids=x)
        with torch.no_grad():
            ref = model(input_ids=x)
        key = "logits" if "logits" in ref else "last_hidden_state"
        assert rel_err(out[key].float(), ref[key].float()) <= TOL[dtype]
    assert fn.stats.traces == 1 and fn.stats.opaque_ops == {}


def test_cpu_input_to_a_cuda_plan_names_the_device(saved_models: dict) -> None:
    import copy

    model = copy.deepcopy(saved_models["llama"]).cuda()
    fn = kiln.compile(model, {"input_ids": torch.randint(1, 500, (2, 8)).cuda()})
    with pytest.raises(kiln.InputError, match="input 'input_ids'.*device"):
        fn(input_ids=torch.randint(1, 500, (2, 8)))


def test_repeating_shapes_replay_a_cuda_graph_with_fresh_outputs(saved_models: dict) -> None:
    import copy

    model = copy.deepcopy(saved_models["llama"]).cuda()
    fn = kiln.compile(model)
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randint(1, 500, (2, 10), generator=gen).cuda() for _ in range(4)]
    outs = [fn(input_ids=x).logits for x in xs]
    runner = fn._entries[-1].run
    assert runner.captures == 1 and not runner.disabled
    with torch.no_grad():
        for x, out in zip(xs, outs):  # earlier outputs were not overwritten by later replays
            assert rel_err(out, model(input_ids=x).logits) <= 1e-5
    assert fn(input_ids=torch.randint(1, 500, (3, 7), generator=gen).cuda()).logits.shape == (3, 7, 500)


class _Counter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count.add_(x.sum(0))
        return self.count * 2


def test_buffer_writes_replay_inside_cuda_graphs() -> None:
    eager, comp = _Counter().cuda(), _Counter().cuda()
    fn = kiln.compile(comp)
    for i in range(5):
        x = torch.full((3, 4), float(i + 1), device="cuda")
        assert torch.equal(fn(x), eager(x))
    assert torch.equal(comp.count, eager.count)
    assert fn._entries[-1].run.captures == 1
