"""Parts of the bundled synthetic corpus: eSpeak NG binding, text, speakers, alignments,
degradations."""

from __future__ import annotations

import ctypes
import math
import time

import numpy as np
import pytest

from speechssl.data.synth import augment
from speechssl.data.synth.alignment import (
    SILENCE,
    check_alignment_lengths,
    frame_labels,
    normalize_phone,
    phone_table,
    read_alignments,
    read_phone_table,
    write_alignments,
    write_phone_table,
)
from speechssl.data.synth.espeak import (
    EspeakError,
    EspeakSynthesizer,
    VoiceSettings,
    _Event,
    list_variants,
)
from speechssl.data.synth.speakers import (
    ACCENTS,
    FEMALE_VARIANTS,
    MALE_VARIANTS,
    SpeakerConfig,
    make_speakers,
    split_sizes,
)
from speechssl.data.synth.vocabulary import (
    AUXILIARY_WORDS,
    DIGITS,
    KEYWORDS,
    UNKNOWN_LABEL,
    TextMix,
    sample_text,
    vocabulary,
)
from speechssl.errors import ConfigError, LabelError


@pytest.fixture(scope="module")
def synth() -> EspeakSynthesizer:
    return EspeakSynthesizer()


# -- eSpeak NG binding ------------------------------------------------------------------------


def test_event_struct_matches_speak_lib_h():
    # speak_lib.h: 6 ints, a pointer, then an 8-byte union
    ptr = ctypes.sizeof(ctypes.c_void_p)
    assert _Event.user_data.offset == 24
    assert _Event.id.offset == 24 + ptr
    assert ctypes.sizeof(_Event) == 24 + ptr + 8


def test_synthesize_audio_and_phoneme_events(synth):
    res = synth.synthesize("go left, then stop.", VoiceSettings(voice="en-us+m3"))
    assert res.sample_rate == 22050
    assert res.samples.dtype == np.int16
    assert 0.8 < len(res.samples) / res.sample_rate < 4.0
    starts = [p.start for p in res.phones]
    assert starts == sorted(starts), "phoneme events are not monotonic"
    assert starts[0] < 0.05 * res.sample_rate  # events start at the beginning...
    assert abs(starts[-1] - len(res.samples)) < 0.01 * res.sample_rate  # ...and cover the end
    names = [normalize_phone(p.name) for p in res.phones]
    assert SILENCE in names[1:-2], "the comma should give a pause phoneme"
    # g oU l E f t | D E n | s t 0 p: about one phone per letter
    assert 10 <= sum(n != SILENCE for n in names) <= 20
    assert len(res.words) == 4
    assert res.words[0].text_position == 1


def test_synthesis_is_independent_of_history_and_clock(synth):
    # f5 has breath noise from eSpeak's random generator, which it seeds from the clock
    settings = VoiceSettings(voice="en-us+f5", rate=160, pitch=60, pitch_range=70)
    first = synth.synthesize("the red house is quiet.", settings, seed=11)
    synth.synthesize("something else entirely.", settings, seed=12)
    synth.synthesize("and with klatt.", VoiceSettings(voice="en+klatt"), seed=13)
    time.sleep(1.1)  # the clock seed has a one-second resolution
    second = synth.synthesize("the red house is quiet.", settings, seed=11)
    assert np.array_equal(first.samples, second.samples)
    assert first.phones == second.phones


def test_seed_changes_only_the_random_part(synth):
    settings = VoiceSettings(voice="en-us+f5")
    a = synth.synthesize("yes.", settings, seed=1)
    b = synth.synthesize("yes.", settings, seed=2)
    assert not np.array_equal(a.samples, b.samples)  # other breath noise
    assert [p.name for p in a.phones] == [p.name for p in b.phones]
    with pytest.raises(EspeakError, match="seed"):
        synth.synthesize("yes.", settings, seed=-1)


def test_voice_parameters_change_the_audio(synth):
    slow = synth.synthesize("the quick brown fox.", VoiceSettings(voice="en-us", rate=120))
    fast = synth.synthesize("the quick brown fox.", VoiceSettings(voice="en-us", rate=240))
    assert len(slow.samples) > 1.5 * len(fast.samples)
    f0 = {}
    for voice, pitch in (("en-us+m3", 30), ("en-us+m3", 80), ("en-us+f2", 50)):
        res = synth.synthesize("ah.", VoiceSettings(voice=voice, pitch=pitch, pitch_range=0))
        f0[voice, pitch] = _f0(res.samples, res.sample_rate)
    assert f0["en-us+m3", 30] < 0.8 * f0["en-us+m3", 80]
    assert 70 < f0["en-us+m3", 30] < 130  # a low male voice
    assert f0["en-us+f2", 50] > 150  # a female voice


def _f0(x: np.ndarray, sr: int) -> float:
    """Autocorrelation pitch (Hz) of 100 ms in the middle of a sustained vowel."""
    seg = x.astype(float)
    mid = len(seg) // 2
    seg = seg[mid - sr // 20 : mid + sr // 20]
    seg -= seg.mean()
    ac = np.correlate(seg, seg, "full")[len(seg) - 1 :]
    lo, hi = sr // 400, sr // 60
    return sr / (lo + int(np.argmax(ac[lo:hi])))


def test_bad_requests_raise_espeak_error(synth, tmp_path):
    with pytest.raises(EspeakError, match="unknown eSpeak voice 'en-xx\\+zz'"):
        synth.synthesize("hello.", VoiceSettings(voice="en-xx+zz"))
    with pytest.raises(EspeakError, match="rate 20"):
        synth.synthesize("hello.", VoiceSettings(voice="en-us", rate=20))
    with pytest.raises(EspeakError, match="library not found"):
        EspeakSynthesizer(library_path=str(tmp_path / "nope.so"), data_path=synth.data_path)
    with pytest.raises(EspeakError, match="data directory"):
        EspeakSynthesizer(library_path=synth.library_path, data_path=str(tmp_path))


# -- text ---------------------------------------------------------------------------------------


def test_vocabulary_covers_every_sampled_word():
    vocab = set(vocabulary())
    assert 300 <= len(vocab) <= 600
    assert set(KEYWORDS) <= vocab and set(DIGITS) <= vocab and set(AUXILIARY_WORDS) <= vocab
    rng = np.random.default_rng(0)
    kinds = {"keyword": 0, "word": 0, "digits": 0, "sentence": 0}
    for _ in range(3000):
        t = sample_text(rng)
        kinds[t.kind] += 1
        assert set(t.words) <= vocab, t
        assert all(w == w.lower() and " " not in w for w in t.words)
        if t.kind == "keyword":
            assert t.words[0] in KEYWORDS and t.keyword == t.words[0]
        elif t.kind == "word":
            assert t.words[0] not in KEYWORDS and t.keyword == UNKNOWN_LABEL
        else:
            assert t.keyword is None
        if t.kind == "digits":
            assert 3 <= len(t.words) <= 8 and set(t.words) <= {*DIGITS, "oh"}
        if t.kind == "sentence":
            assert 2 <= len(t.words) <= 14
    assert all(n > 200 for n in kinds.values()), kinds


def test_text_mix_is_respected():
    rng = np.random.default_rng(1)
    texts = [sample_text(rng, TextMix(keyword=1, word=0, digits=0, sentence=0)) for _ in range(50)]
    assert {t.kind for t in texts} == {"keyword"}


# -- speakers -------------------------------------------------------------------------------------


def test_speakers_distinct_split_and_balanced():
    spks = make_speakers(SpeakerConfig(), seed=7)
    assert len(spks) == 40
    assert len({s.spk_id for s in spks}) == 40
    assert len({(s.accent, s.variant) for s in spks}) == 40
    by_split = {sp: [s for s in spks if s.split == sp] for sp in ("train", "dev", "test")}
    assert {k: len(v) for k, v in by_split.items()} == {"train": 32, "dev": 4, "test": 4}
    for sp in ("dev", "test"):
        assert sorted(s.gender for s in by_split[sp]) == ["f", "f", "m", "m"]
    assert len({s.accent for s in spks}) == len(ACCENTS)
    assert all(0.9 <= s.warp <= 1.1 for s in spks) and len({s.warp for s in spks}) > 30
    assert make_speakers(SpeakerConfig(), seed=7) == spks
    assert make_speakers(SpeakerConfig(), seed=8) != spks


def test_variant_genders_match_voice_files():
    genders = list_variants()
    for v in MALE_VARIANTS:
        assert genders[v] == "male", v
    for v in FEMALE_VARIANTS:
        assert genders[v] == "female", v


def test_speaker_config_errors():
    with pytest.raises(ConfigError, match="num_speakers"):
        SpeakerConfig(num_speakers=2)
    with pytest.raises(ConfigError, match="rate bounds"):
        SpeakerConfig(rate_low=50)
    assert split_sizes(3, 0.1, 0.1) == {"train": 1, "dev": 1, "test": 1}


# -- alignments -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "symbol"),
    [
        ("'E", "E"),
        (",aI2", "aI"),
        ("@2", "@"),
        ("t2", "t"),
        ("3:", "3:"),
        ("'3:", "3:"),
        ("i@3", "i@"),
        ("3", "3"),
        ("_", SILENCE),
        ("_:", SILENCE),
        ("dZ", "dZ"),
        ("a#", "a#"),
    ],
)
def test_normalize_phone(raw, symbol):
    assert normalize_phone(raw) == symbol


def test_frame_labels_use_frame_centres():
    sr = 16000
    # a: [0, 240) b: [240, 400) -> frame 0 centre 80 is a, frame 1 centre 240 is b
    labels = frame_labels([(0, "a"), (240, "b"), (400, SILENCE)], 480 + 100, sr)
    assert labels == ["a", "b", SILENCE]
    assert frame_labels([(200, "a")], 480, sr) == [SILENCE, "a", "a"]
    assert frame_labels([(241, "a")], 480, sr) == [SILENCE, SILENCE, "a"]
    with pytest.raises(ValueError, match="monotonic"):
        frame_labels([(300, "a"), (200, "b")], 480, sr)


def test_alignment_files_roundtrip_and_checks(tmp_path):
    ali = {"u2": ["SIL", "a", "SIL"], "u1": ["SIL", "b"]}
    write_alignments(tmp_path / "ali.phones", ali)
    assert (tmp_path / "ali.phones").read_text().splitlines()[0] == "u1 SIL b"
    assert read_alignments(tmp_path / "ali.phones") == ali
    table = phone_table(["b", "a", SILENCE, "a"])
    assert table == {SILENCE: 0, "a": 1, "b": 2}
    write_phone_table(tmp_path / "phones.txt", table)
    assert read_phone_table(tmp_path / "phones.txt") == table
    check_alignment_lengths(ali, {"u1": 320, "u2": 480 + 159})
    with pytest.raises(LabelError, match=r"u2.*2 alignment frames, expected 3"):
        check_alignment_lengths({"u1": ali["u1"], "u2": ["a", "b"]}, {"u1": 320, "u2": 480})
    with pytest.raises(LabelError, match=r"u3.*no alignment"):
        check_alignment_lengths(ali, {"u1": 320, "u2": 480, "u3": 160})
    (tmp_path / "bad.txt").write_text("SIL 0\na 2\n")
    with pytest.raises(LabelError, match=r"0\.\.P-1"):
        read_phone_table(tmp_path / "bad.txt")


# -- degradations ---------------------------------------------------------------------------------


def test_add_noise_hits_the_requested_snr():
    rng = np.random.default_rng(0)
    sig = np.sin(np.arange(16000) / 7.0)
    mask = np.zeros(16000, bool)
    mask[4000:12000] = True
    sig[~mask] = 0
    noise = augment.white_noise(rng, 16000)
    out = augment.add_noise(sig, noise, 10.0, mask)
    added = out - sig
    snr = 10 * np.log10(np.mean(sig[mask] ** 2) / np.mean(added**2))
    assert snr == pytest.approx(10.0, abs=1e-6)


def test_pink_noise_slope():
    x = augment.pink_noise(np.random.default_rng(0), 1 << 16)
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.arange(len(power))
    low = power[(f > 100) & (f < 200)].mean()
    high = power[(f > 10000) & (f < 20000)].mean()
    # 1/f: 100x the frequency -> -20 dB
    assert 10 * np.log10(low / high) == pytest.approx(20.0, abs=2.0)


def test_rir_decays_by_60_db_at_rt60():
    sr, rt60 = 16000, 0.5
    rir = augment.synthetic_rir(np.random.default_rng(0), sr, rt60, 3.0)
    assert rir[0] == 1.0
    tail_energy = np.sum(rir[1:] ** 2)
    assert 10 * np.log10(1.0 / tail_energy) == pytest.approx(3.0, abs=1e-6)
    win = int(0.02 * sr)
    early = np.mean(rir[100 : 100 + win] ** 2)
    t = int(rt60 * sr) - win
    late = np.mean(rir[t : t + win] ** 2)
    # about 60 dB over (rt60 - 100 samples - one window)
    expected = 60 * (t - 100) / (rt60 * sr)
    assert 10 * np.log10(early / late) == pytest.approx(expected, abs=6.0)
    sig = np.zeros(2000)
    sig[10] = 1.0
    out = augment.reverberate(sig, rir)
    assert len(out) == len(sig) and out[10] == pytest.approx(1.0)


def test_babble_and_level():
    rng = np.random.default_rng(0)
    talkers = [np.sin(np.arange(3000) / k) for k in (3.0, 5.0, 9.0)]
    b = augment.babble_noise(rng, talkers, 10000)
    assert len(b) == 10000 and np.std(b) > 0.5
    with pytest.raises(ValueError):
        augment.babble_noise(rng, [], 10)
    x = augment.normalize_level(np.sin(np.arange(1000) / 5.0) * 0.01, -20.0)
    assert 20 * math.log10(np.sqrt(np.mean(x**2))) == pytest.approx(-20.0, abs=1e-6)
    y = augment.normalize_level(np.r_[np.zeros(999), 1.0] * 1e-3, -3.5)
    assert np.max(np.abs(y)) == pytest.approx(0.98)  # peak-limited
    assert augment.to_int16(np.array([2.0, -2.0, 0.5])).tolist() == [32767, -32768, 16384]
