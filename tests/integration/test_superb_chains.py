"""The superb parts chained on real-layout corpora: prep -> audio -> features -> head ->
decode/score -> metric (tiny fixtures; the heads are small so the tests stay fast)."""

from __future__ import annotations

import pytest
import torch
from probing_fixtures import make_librispeech_pr, make_voxceleb1

from speechssl.data.kaldi_dir import KaldiDataDir
from speechssl.data.prep.librispeech import prepare_librispeech_phones
from speechssl.data.prep.voxceleb import prepare_voxceleb1_asv
from speechssl.downstream.asr import BiLSTMCTCHead, CharVocabulary, ctc_loss, greedy_decode
from speechssl.downstream.asv import read_trials, score_trials
from speechssl.downstream.metrics import (
    equal_error_rate,
    min_dcf,
    word_error_rate,
)
from speechssl.features import fbank


def _fbank(kd: KaldiDataDir, utts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    waves = [kd.load(u)[0] for u in utts]
    lengths = torch.tensor([w.shape[-1] for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : w.shape[-1]] = w
    return fbank(batch, lengths)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_librispeech_asr_chain_overfits_prepared_utterances(tmp_path, one_thread):
    root = make_librispeech_pr(tmp_path / "corpus")
    out = tmp_path / "dev"
    prepare_librispeech_phones(root, "dev-clean", out, root / "lexicon.txt", skip_oov=True)
    kd = KaldiDataDir(out)
    utts = kd.utt_ids()
    assert kd.text is not None
    refs = [kd.text[u] for u in utts]
    vocab = CharVocabulary.from_texts(kd.text)
    targets = [vocab.encode(kd.text[u], u) for u in utts]
    feats, frames = _fbank(kd, utts)
    feats = (feats - feats.mean((0, 1))) / feats.std((0, 1))
    torch.manual_seed(0)
    head = BiLSTMCTCHead(feats.shape[-1], len(vocab), hidden=32, proj_dim=24, dropout=0.0)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(100):
        lp, lens = head(feats, frames)
        loss = ctc_loss(lp, lens, targets, utts=utts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        hyps = greedy_decode(*head(feats, frames), vocab)
    assert word_error_rate(refs, hyps, ids=utts) == 0.0, hyps
    # the same dir carries the PR targets of every utterance
    assert sorted(kd.table("utt2phones")) == utts


def test_voxceleb_asv_chain_scores_prepared_trials(tmp_path):
    root = make_voxceleb1(tmp_path / "voxceleb1")
    out = tmp_path / "asv"
    prepare_voxceleb1_asv(root, out, dev_speakers=2)
    test = KaldiDataDir(out / "test")
    trials = read_trials(out / "test" / "trials", set(test.utt_ids()))
    utts = test.utt_ids()
    feats, frames = _fbank(test, utts)
    # a fixed embedding: the mean log-mel spectrum (the fixture's speakers differ in pitch)
    emb = {
        u: feats[i, : int(frames[i])].mean(0) - feats[:, :5].mean((0, 1))
        for i, u in enumerate(utts)
    }
    scores, labels = score_trials(emb, trials)
    assert labels.tolist() == [1, 0, 1, 0]  # veri_test.txt's labels, in its order
    eer, threshold = equal_error_rate(scores, labels)
    assert scores.min() <= threshold <= scores.max()
    assert eer == 0.0 and min_dcf(scores, labels) == 0.0
    # swapping the trial labels must turn the result around
    assert equal_error_rate(scores, 1 - labels)[0] == 1.0
