"""The ``random-init:DIR`` probing upstream: the config of a model dir with fresh weights
(the same-architecture baseline of an SSL claim), reproducible, never the trained ones."""

from __future__ import annotations

import pytest
import torch

from speechssl.downstream.upstreams import load_upstream
from speechssl.errors import ConfigError
from speechssl.models import create_model
from speechssl.models.io import save_model_dir


def test_random_init_upstream_has_the_config_not_the_weights(tmp_path):
    torch.manual_seed(123)
    trained = create_model("speaker_dino_tiny", crop_seconds=0.5)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # far from any initialisation
    save_model_dir(trained, tmp_path / "md")
    (tmp_path / "exp").mkdir()
    save_model_dir(trained, tmp_path / "exp" / "final")

    up = load_upstream(f"random-init:{tmp_path / 'md'}")
    assert up.model.config == trained.config  # same architecture and settings
    ours = up.model.state_dict()
    trained_params = dict(trained.named_parameters())
    assert all(not torch.equal(ours[k], v) for k, v in trained_params.items())
    ident = up.identity()
    assert ident["source"] == f"random-init:{tmp_path / 'md'}"
    assert ident["name"] == "random-init speaker_dino_tiny"
    # seeded: the same weights every time (a layer cache is reused), from a dir or an exp dir,
    # whatever the global RNG state, which it leaves alone
    state = torch.random.get_rng_state()
    again = load_upstream(f"random-init:{tmp_path / 'exp'}")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert again.identity()["weights_sha256"] == ident["weights_sha256"]
    waves = torch.randn(2, 8000)
    out = up(waves, torch.tensor([8000, 6000]))
    assert len(out.hidden_states) == up.num_layers == 3


def test_random_init_upstream_needs_a_model_dir(tmp_path):
    with pytest.raises(ConfigError, match=r"random-init:.*not a speechssl model dir"):
        load_upstream(f"random-init:{tmp_path}")
