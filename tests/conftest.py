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
def _seed() -> None:
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory: pytest.TempPathFactory):
    """A tiny bundled-synth corpus, built once per test session (about two seconds).

    Returns the corpus root (a ``pathlib.Path``) as written by
    ``speechssl.data.synth.make_corpus(root, hours=0.01, seed=123, num_speakers=6)``:
    ``train/`` (4 speakers), ``dev/`` and ``test/`` (1 speaker each), each a Kaldi data dir
    with ``wav/`` (16 kHz 16-bit mono), ``wav.scp`` (absolute paths), ``text``, ``utt2spk``,
    ``spk2utt``, ``utt2dur``, ``utt2num_samples``, ``spk2gender``, ``ali.phones`` (one
    phone per 10 ms frame), ``phones.txt``, ``utt2keyword`` (isolated words only), plus
    ``meta.json``/``README``/``phones.txt`` at the root; about 36 s of audio in ~18
    utterances. Clean speech with a faint noise floor, no noise/reverb. Treat it as
    read-only: it is shared by every test that asks for it.
    """
    from speechssl.data.synth import make_corpus

    root = tmp_path_factory.mktemp("synth") / "corpus"
    make_corpus(root, hours=0.01, seed=123, num_speakers=6, nj=1)
    return root
