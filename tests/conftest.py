"""Shared pytest configuration: CUDA skipping, deterministic seeds, small thread counts."""

from __future__ import annotations

import os

import pytest

# keep tests reproducible and polite on a 2-core machine
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """Entry points called in-process (``speechssl-train``/``speechssl-probe`` ``main``) set up
    root logging on the stream of the moment, which pytest closes after the test; put the
    root logger back so later tests do not log into a closed stream."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _seed() -> None:
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory: pytest.TempPathFactory):
    """A tiny bundled-synth corpus, built once per test session (a few seconds).

    Returns the corpus root (a ``pathlib.Path``) written by
    ``speechssl.data.synth.make_corpus`` with seed 123, 0.01 h (about 36 s, ~18
    utterances) and 8 speakers split 4/2/2: ``train/``, ``dev/``, ``test/``, each a Kaldi
    data dir with ``wav/`` (16 kHz 16-bit mono), ``wav.scp`` (absolute paths), ``text``,
    ``utt2spk``, ``spk2utt``, ``utt2dur``, ``utt2num_samples``, ``spk2gender``,
    ``ali.phones`` (one phone per 10 ms frame), ``phones.txt``, ``utt2keyword`` (isolated
    words only), ``utt2kind``, ``utt2aug``, ``spk2voice``; ``meta.json``, ``README`` and
    ``phones.txt`` at the root. Clean speech with a faint noise floor, no noise/reverb.
    Treat it as read-only: every test that asks for it shares it.
    """
    from speechssl.data.synth import SpeakerConfig, SynthCorpusConfig, make_corpus

    root = tmp_path_factory.mktemp("synth") / "corpus"
    speakers = SpeakerConfig(num_speakers=8, dev_fraction=0.25, test_fraction=0.25)
    make_corpus(root, seed=123, nj=1, config=SynthCorpusConfig(hours=0.01, speakers=speakers))
    return root
