"""SUPERB ASR head: vocabulary, CTC training on one batch, greedy and beam decoding."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch

from speechssl.downstream.asr import (
    BiLSTMCTCHead,
    CharVocabulary,
    DecoderUnavailableError,
    beam_decode,
    ctc_loss,
    greedy_decode,
    write_char_lexicon,
)
from speechssl.downstream.metrics import word_error_rate
from speechssl.errors import ConfigError, LabelError

HAVE_FLASHLIGHT = importlib.util.find_spec("flashlight") is not None
TEXTS = {"u1": "HI YOU", "u2": "OH HI", "u3": "YOU OH HI"}


def test_vocabulary_encode_decode_and_unknown_character(tmp_path):
    vocab = CharVocabulary.from_texts(TEXTS)
    assert vocab.tokens == ["<blank>", "|", "H", "I", "O", "U", "Y"]
    ids = vocab.encode("HI  YOU")
    assert [vocab.tokens[i] for i in ids] == ["H", "I", "|", "Y", "O", "U", "|"]
    assert vocab.decode(ids) == "HI YOU"
    with pytest.raises(LabelError, match=r"dev-7: character 'Z' \(in word 'ZOO'\)"):
        vocab.encode("HI ZOO", utt="dev-7")
    with pytest.raises(LabelError, match="dev-8: empty transcript"):
        vocab.encode("  ", utt="dev-8")
    vocab.save(tmp_path / "tokens.txt")
    assert CharVocabulary.load(tmp_path / "tokens.txt") == vocab
    with pytest.raises(ConfigError, match="word boundary"):
        CharVocabulary.from_texts(["A|B"])


def test_head_shapes_defaults_and_padding_invariance():
    head = BiLSTMCTCHead(40, 30)  # SUPERB sizes: proj 1024, 2 x BiLSTM 1024
    assert head.proj.out_features == 1024
    assert [m.hidden_size for m in head.lstms] == [1024, 1024]
    assert all(m.bidirectional for m in head.lstms)
    assert head.out.in_features == 2048 and head.out.out_features == 30

    small = BiLSTMCTCHead(8, 5, hidden=6, proj_dim=4).eval()
    feats = torch.randn(2, 9, 8)
    lengths = torch.tensor([9, 4])
    lp, out_len = small(feats, lengths)
    assert lp.shape == (2, 9, 5) and torch.equal(out_len, lengths)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2, 9))
    alone, _ = small(feats[1:, :4], lengths[1:])
    assert torch.allclose(lp[1, :4], alone[0], atol=1e-6)  # padding does not leak in


@pytest.fixture
def one_thread():
    """Tiny LSTM steps run fastest (and steadiest on a shared machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_head_overfits_one_batch_and_greedy_decode_recovers_targets(one_thread):
    torch.manual_seed(0)
    vocab = CharVocabulary.from_texts(TEXTS)
    utts = sorted(TEXTS)
    targets = [vocab.encode(TEXTS[u], u) for u in utts]
    lengths = torch.tensor([24, 20, 28])
    feats = torch.randn(3, 28, 16)
    head = BiLSTMCTCHead(16, len(vocab), hidden=32, proj_dim=24, dropout=0.0)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        lp, lens = head(feats, lengths)
        loss = ctc_loss(lp, lens, targets, utts=utts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.isfinite(losses[0]) and losses[-1] < 0.1 * losses[0], losses[::20]
    head.eval()
    with torch.no_grad():
        lp, lens = head(feats, lengths)
    hyps = greedy_decode(lp, lens, vocab)
    assert hyps == [TEXTS[u] for u in utts]
    assert word_error_rate([TEXTS[u] for u in utts], hyps) == 0.0


def test_ctc_target_longer_than_features_is_named():
    vocab = CharVocabulary.from_texts(TEXTS)
    lp = torch.randn(1, 5, len(vocab)).log_softmax(-1)
    target = vocab.encode("YOU OH HI")
    with pytest.raises(LabelError, match=r"u9: target needs at least 10 frames .* have 5"):
        ctc_loss(lp, torch.tensor([5]), [target], utts=["u9"])


def _emissions(vocab: CharVocabulary, spelling: list[str]) -> torch.Tensor:
    """Log-probs that spell ``spelling`` (one token per frame, '-' = blank)."""
    e = torch.full((1, len(spelling), len(vocab)), -8.0)
    for t, tok in enumerate(spelling):
        e[0, t, 0 if tok == "-" else vocab.index[tok]] = 0.0
    return e.log_softmax(-1)


def _hide_flashlight(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``flashlight`` unimportable for this test, as on a machine without
    flashlight-text (also where it is installed; monkeypatch restores everything)."""
    import torchaudio.models.decoder as dec

    monkeypatch.setitem(sys.modules, "flashlight", None)
    for name in list(sys.modules):
        if name.startswith("flashlight.") or name == "torchaudio.models.decoder._ctc_decoder":
            monkeypatch.delitem(sys.modules, name)
    for attr in ("_ctc_decoder", "ctc_decoder"):
        if attr in vars(dec):  # (hasattr would run the module's lazy __getattr__)
            monkeypatch.delattr(dec, attr)


def test_beam_decode_without_flashlight_says_what_to_install(tmp_path, monkeypatch):
    vocab = CharVocabulary.from_texts(TEXTS)
    lex = tmp_path / "lexicon.txt"
    write_char_lexicon(["HI", "OH", "YOU"], lex, vocab)
    _hide_flashlight(monkeypatch)
    with pytest.raises(DecoderUnavailableError, match="pip install flashlight-text"):
        beam_decode(_emissions(vocab, list("HI|")), torch.tensor([3]), vocab, lex)


ARPA = """
\\data\\
ngram 1=6
ngram 2=2

\\1-grams:
-0.5\t<s>\t-0.3
-1.0\t</s>\t0
-0.3\tHI\t-0.3
-3.0\tHO\t-0.3
-1.0\tYOU\t-0.3
-3.0\t<unk>\t0

\\2-grams:
-0.1\t<s> HI
-0.1\tHI </s>

\\end\\
"""


@pytest.mark.skipif(
    not HAVE_FLASHLIGHT, reason="needs flashlight-text (pip install flashlight-text)"
)
def test_beam_decode_with_lexicon_and_lm(tmp_path):
    vocab = CharVocabulary.from_texts({"a": "HI HO YOU"})
    lex = tmp_path / "lexicon.txt"
    assert write_char_lexicon(["HI", "HO", "YOU"], lex, vocab) == 3
    # a misspelt frame sequence "HIX" is not a word: the lexicon forces "HI"
    lp = _emissions(vocab, ["H", "-", "I", "|", "Y", "O", "U", "|"])
    assert beam_decode(lp, torch.tensor([8]), vocab, lex) == ["HI YOU"]
    # 'I' and 'O' nearly tied: acoustics prefer HO, the LM prefers HI
    lp = _emissions(vocab, ["H", "-", "O", "|", "-"])
    lp[0, 2, vocab.index["I"]] = -0.3
    lp = lp.log_softmax(-1)
    assert beam_decode(lp, torch.tensor([5]), vocab, lex) == ["HO"]
    arpa = tmp_path / "lm.arpa"
    arpa.write_text(ARPA)
    assert beam_decode(lp, torch.tensor([5]), vocab, lex, lm=arpa) == ["HI"]


def test_beam_decode_bad_lexicon_and_lm_are_named(tmp_path):
    vocab = CharVocabulary.from_texts(TEXTS)
    lp = _emissions(vocab, list("HI|"))
    with pytest.raises(ConfigError, match=r"lexicon .*missing.txt not found"):
        beam_decode(lp, torch.tensor([3]), vocab, tmp_path / "missing.txt")
    lex = tmp_path / "lex.txt"
    lex.write_text("HI H I |\nZOO Z O O |\n")
    with pytest.raises(LabelError, match=r"ZOO \(.*lex.txt:2\): spelling uses tokens \['Z'\]"):
        beam_decode(lp, torch.tensor([3]), vocab, lex)
    lex.write_text("HI H I |\n")
    with pytest.raises(ConfigError, match=r"language model .*nope.bin not found"):
        beam_decode(lp, torch.tensor([3]), vocab, lex, lm=tmp_path / "nope.bin")
