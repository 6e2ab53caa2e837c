"""The same code path on CUDA: every tiny preset trains under bf16 autocast, and fp32 CUDA
hidden states match CPU. Skipped (with the reason) where there is no GPU."""

import pytest
import torch
from model_fixtures import make_batch

from speechssl.models import create_model, get_spec, list_models, model_config

TINY = [n for n in list_models() if get_spec(n).size == "tiny"]


def _overrides(name):
    return {"num_classes": (32,)} if hasattr(model_config(name), "num_classes") else {}


@pytest.mark.cuda
@pytest.mark.parametrize("name", TINY)
def test_tiny_models_on_cuda(name, synth_corpus):
    torch.manual_seed(0)
    batch = make_batch(synth_corpus, 3, 1.2, codebook_size=32)
    cpu = create_model(name, **_overrides(name)).eval()
    gpu = create_model(name, **_overrides(name)).cuda().eval()
    gpu.load_state_dict(cpu.state_dict())
    with torch.no_grad():
        a = cpu.extract(batch.waveforms, batch.lengths)
        b = gpu.extract(batch.waveforms.cuda(), batch.lengths.cuda())
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert (x - y.cpu()).abs().max() < 1e-3
    gpu.train()
    opt = torch.optim.AdamW(gpu.parameters(), lr=1e-3)
    cuda_batch = batch.to("cuda")
    losses = []
    for step in range(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = gpu(cuda_batch)
        assert torch.isfinite(out.loss.total)
        opt.zero_grad()
        out.loss.total.backward()
        opt.step()
        gpu.after_optimizer_step(step + 1)
        losses.append(float(out.loss.total))
    assert losses[-1] < losses[0]
