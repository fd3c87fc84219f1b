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
