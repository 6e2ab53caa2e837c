"""speechssl.data.audio: every error path with real files written by soundfile."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_fixtures import make_data_dir, write_audio

from speechssl.data.audio import (
    AudioChannelError,
    AudioCorruptError,
    AudioEmptyError,
    AudioError,
    AudioMissingError,
    AudioNonFiniteError,
    AudioPipeError,
    AudioSampleRateError,
    AudioSilentError,
    AudioSource,
    AudioTooLongError,
    AudioTooShortError,
    AudioTruncatedError,
    LoadOptions,
    SkipReport,
    declared_wav_frames,
    load_audio,
    probe,
)
from speechssl.data.kaldi_dir import KaldiDataDir, Segment, iter_audio, write_data_dir
from speechssl.errors import ConfigError, ItemError


def _load(path, utt="u1", **kw):
    return load_audio(AudioSource(path=str(path)), LoadOptions(**kw), utt=utt)


@pytest.mark.parametrize("suffix", ["wav", "flac", "ogg"])
def test_loads_formats_as_float32_mono(tmp_path, suffix):
    p = write_audio(tmp_path / f"a.{suffix}", 0.5, 16000)
    wave, rate = _load(p)
    assert rate == 16000 and wave.dtype == torch.float32 and wave.ndim == 1
    assert wave.shape[0] == 8000
    if suffix != "ogg":  # lossless formats round-trip (16-bit quantisation only)
        ref, _ = sf.read(str(p), dtype="float32")
        assert torch.allclose(wave, torch.from_numpy(ref))


def test_segment_read_matches_slice_of_whole(tmp_path):
    p = write_audio(tmp_path / "long.flac", 3.0, 16000)
    whole, _ = _load(p)
    seg, _ = load_audio(AudioSource(path=str(p), start=1.25, end=2.0), LoadOptions(), utt="s")
    assert seg.shape[0] == 12000
    assert torch.equal(seg, whole[20000:32000])
    # the source loads and probes itself (the same as the module functions)
    src = AudioSource(path=str(p), start=1.25, end=2.0)
    assert torch.equal(src.load(utt="s")[0], seg)
    assert src.probe(utt="s") == probe(src, utt="s") and src.probe().frames == 12000


def test_segment_past_end_within_overshoot_is_clamped_beyond_is_truncated(tmp_path):
    p = write_audio(tmp_path / "a.wav", 1.0, 16000)
    seg, _ = load_audio(AudioSource(path=str(p), start=0.5, end=1.02), utt="s")
    assert seg.shape[0] == 8000
    with pytest.raises(AudioTruncatedError, match=r"s \(.*a\.wav\): segment ends at 1\.500 s"):
        load_audio(AudioSource(path=str(p), start=0.5, end=1.5), utt="s")
    with pytest.raises(AudioTruncatedError, match=r"segment starts at 2\.000 s"):
        load_audio(AudioSource(path=str(p), start=2.0, end=2.5), utt="s")


def test_resampling_to_target_rate(tmp_path):
    p = write_audio(tmp_path / "a.wav", 1.0, 8000)
    wave, rate = _load(p, sample_rate=16000)
    assert rate == 16000 and wave.shape[0] == 16000
    wave_native, rate_native = _load(p, sample_rate=None)
    assert rate_native == 8000 and wave_native.shape[0] == 8000


def test_missing_file(tmp_path):
    with pytest.raises(AudioMissingError, match=r"u1 \(.*nope\.wav\): audio file does not exist"):
        _load(tmp_path / "nope.wav")


def test_empty_file_zero_bytes_and_zero_samples(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(AudioEmptyError, match="0 bytes"):
        _load(p)
    q = tmp_path / "nosamples.wav"
    sf.write(str(q), np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioEmptyError, match="no samples"):
        _load(q)


def test_garbage_file_is_corrupt(tmp_path):
    p = tmp_path / "junk.wav"
    p.write_bytes(b"this is not audio at all" * 20)
    with pytest.raises(AudioCorruptError, match="unreadable audio") as info:
        _load(p)
    assert not isinstance(info.value, AudioTruncatedError)


def test_truncated_wav_detected_from_header(tmp_path):
    p = write_audio(tmp_path / "a.wav", 1.0, 16000, subtype="PCM_16")
    assert declared_wav_frames(p) == 16000
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioTruncatedError, match="header declares 16000 samples, file holds"):
        _load(p)
    with pytest.raises(AudioTruncatedError):
        probe(AudioSource(path=str(p)), utt="u1")


def test_truncated_flac_fails_to_decode(tmp_path):
    p = write_audio(tmp_path / "a.flac", 1.0, 16000)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioCorruptError, match="u1"):
        _load(p)


def test_nan_and_inf_samples(tmp_path):
    with pytest.raises(AudioNonFiniteError, match=r"\d+ NaN and 0 infinite samples"):
        _load(write_audio(tmp_path / "nan.wav", 0.5, fill="nan"))
    with pytest.raises(AudioNonFiniteError, match="0 NaN and 1 infinite samples"):
        _load(write_audio(tmp_path / "inf.wav", 0.5, fill="inf"))


def test_all_zero(tmp_path):
    p = write_audio(tmp_path / "z.wav", 0.5, fill="zeros")
    with pytest.raises(AudioSilentError, match="every sample is zero"):
        _load(p)
    wave, _ = _load(p, reject_silent=False)
    assert not wave.any()


def test_wrong_sample_rate(tmp_path):
    p = write_audio(tmp_path / "a.wav", 0.5, 8000)
    with pytest.raises(AudioSampleRateError, match="8000 Hz, expected 16000 Hz"):
        _load(p, resample=False)
    with pytest.raises(AudioSampleRateError, match="not one of the allowed"):
        _load(p, allowed_rates=(16000, 44100))


def test_channel_policy(tmp_path):
    p = write_audio(tmp_path / "st.wav", 0.5, channels=2, subtype="FLOAT")
    with pytest.raises(AudioChannelError, match="2 channels"):
        _load(p)
    ref, _ = sf.read(str(p), dtype="float32")
    left, _ = _load(p, channels="select:0")
    right, _ = _load(p, channels="select:1")
    mean, _ = _load(p, channels="mean")
    assert torch.equal(left, torch.from_numpy(ref[:, 0]))
    assert torch.equal(right, torch.from_numpy(ref[:, 1]))
    assert torch.allclose(mean, torch.from_numpy(ref.mean(axis=1)))
    with pytest.raises(AudioChannelError, match="channel 2 requested but the file has 2"):
        _load(p, channels="select:2")
    with pytest.raises(ConfigError):
        LoadOptions(channels="left")


def test_too_short_and_too_long(tmp_path):
    p = write_audio(tmp_path / "a.wav", 0.5)
    with pytest.raises(AudioTooShortError, match=r"0\.500 s is shorter than the minimum 1\.0 s"):
        _load(p, min_duration=1.0)
    with pytest.raises(AudioTooLongError, match=r"0\.500 s is longer than the maximum 0\.25 s"):
        _load(p, max_duration=0.25)


def test_pipe_entries_are_opt_in(tmp_path):
    src = write_audio(tmp_path / "a.wav", 0.5)
    ddir = tmp_path / "d"
    write_data_dir(ddir, wav_scp={"u1": f"cat {src} |"}, utt2spk={"u1": "s"})
    with pytest.raises(AudioPipeError, match="allow_pipes"):
        KaldiDataDir(ddir).audio_source("u1")
    source = KaldiDataDir(ddir, allow_pipes=True).audio_source("u1")
    assert source.pipe
    wave, _ = load_audio(source, utt="u1")
    ref, _ = _load(src)
    assert torch.equal(wave, ref)
    with pytest.raises(AudioPipeError, match="exited with status 3"):
        load_audio(AudioSource(path="echo oops >&2; exit 3", pipe=True), utt="u1")


def test_error_hierarchy_and_fields(tmp_path):
    with pytest.raises(AudioError) as info:
        _load(tmp_path / "x.wav", utt="spkA-0001")
    err = info.value
    assert isinstance(err, ItemError)
    assert err.item == "spkA-0001" and err.where.endswith("x.wav") and err.kind == "missing"


def test_iter_audio_strict_and_tolerant(tmp_path):
    ddir = make_data_dir(tmp_path, speakers=2, utts_per_speaker=3)
    kd = KaldiDataDir(ddir)
    wav = kd.wav_scp
    os.remove(wav["spk0-u001"])
    write_audio(tmp_path / "audio" / "spk1-u002.wav", 0.6, fill="nan")
    with pytest.raises(AudioMissingError, match="spk0-u001"):
        list(iter_audio(KaldiDataDir(ddir)))
    report = SkipReport()
    got = [u.utt_id for u in iter_audio(KaldiDataDir(ddir), tolerant=True, report=report)]
    assert got == ["spk0-u000", "spk0-u002", "spk1-u000", "spk1-u001"]
    report.check()
    assert (report.seen, report.loaded, report.num_skipped) == (6, 4, 2)
    assert report.by_kind() == {"missing": 1, "non-finite": 1}
    assert report.summary() == "audio: 4 loaded, 2 skipped (1 missing, 1 non-finite) of 6"
    assert [s[0] for s in report.skipped] == ["spk0-u001", "spk1-u002"]


def test_iter_audio_reads_segments(tmp_path):
    rec = write_audio(tmp_path / "rec.flac", 2.0)
    ddir = tmp_path / "d"
    write_data_dir(
        ddir,
        wav_scp={"rec": str(rec)},
        utt2spk={"rec-a": "s", "rec-b": "s"},
        segments={"rec-a": Segment("rec", 0.0, 0.75), "rec-b": Segment("rec", 0.75, 2.0)},
    )
    out = {u.utt_id: u.waveform for u in iter_audio(KaldiDataDir(ddir))}
    whole, _ = _load(rec)
    assert torch.equal(torch.cat([out["rec-a"], out["rec-b"]]), whole)
