"""Run under TRITON_INTERPRET=1 (set before triton is imported): the fused Triton path
against the torch path on CPU tensors over an option grid. Prints one JSON line per case
and exits non-zero on a mismatch. Used by test_features_triton.py in a subprocess."""

from __future__ import annotations

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1 before running"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from kaldi_refs import speech_like  # noqa: E402

from speechssl.features import (  # noqa: E402
    FbankOptions,
    FrameOptions,
    MelOptions,
    MfccOptions,
    SpectrogramOptions,
    compute_features,
)


def fo(**kw) -> FrameOptions:
    base = dict(sample_frequency=8000.0)
    base.update(kw)
    return FrameOptions(**base)


CASES = {
    "fbank-default": FbankOptions(frame=fo()),
    "fbank-nosnip-energy-htk": FbankOptions(
        frame=fo(snip_edges=False),
        use_energy=True,
        htk_compat=True,
        mel=MelOptions(num_mel_bins=40),
    ),
    "fbank-windowed-energy-floor": FbankOptions(
        frame=fo(window_type="hamming"), use_energy=True, raw_energy=False, energy_floor=30.0
    ),
    "fbank-magnitude-nolog-nodc": FbankOptions(
        frame=fo(remove_dc_offset=False, preemphasis_coefficient=0.0, window_type="rectangular"),
        use_power=False,
        use_log_fbank=False,
    ),
    "fbank-dither-nosnip": FbankOptions(
        frame=fo(dither=1.0, snip_edges=False, window_type="blackman")
    ),
    "fbank-16k-80-nopow2": FbankOptions(
        frame=fo(sample_frequency=16000.0, round_to_power_of_two=False, window_type="sine"),
        mel=MelOptions(num_mel_bins=80, high_freq=-400.0),
    ),
    "mfcc-default": MfccOptions(frame=fo()),
    "mfcc-energy-htk-nosnip": MfccOptions(
        frame=fo(snip_edges=False), use_energy=True, htk_compat=True
    ),
    "mfcc-htk-c0-nolifter": MfccOptions(
        frame=fo(window_type="hanning"), htk_compat=True, cepstral_lifter=0.0, num_ceps=23
    ),
    "mfcc-dither-energy": MfccOptions(frame=fo(dither=0.5), use_energy=True),
    "spectrogram": SpectrogramOptions(frame=fo()),
    "spectrogram-nosnip-windowed": SpectrogramOptions(
        frame=fo(snip_edges=False), raw_energy=False, energy_floor=5.0
    ),
}


def main() -> int:
    rng = np.random.default_rng(0)
    # three utterances incl. one shorter than a frame (no frames / heavy reflection)
    lens = [1100, 620, 150]
    waves = torch.zeros(len(lens), max(lens))
    for i, n in enumerate(lens):
        waves[i, :n] = (
            torch.from_numpy(speech_like(8000, n / 8000, i))
            if n > 400
            else torch.from_numpy(rng.standard_normal(n).astype(np.float32) * 500)
        )
    lengths = torch.tensor(lens)
    seeds = torch.tensor([5, 6, 7])
    failed = 0
    for name, opts in CASES.items():
        if opts.frame.sample_frequency != 8000.0:
            w16 = torch.nn.functional.interpolate(waves.unsqueeze(1), scale_factor=2.0).squeeze(1)
            w, ln = w16, lengths * 2
        else:
            w, ln = waves, lengths
        ref, nf_ref = compute_features(w, ln, opts, seeds=seeds, backend="torch")
        got, nf = compute_features(w, ln, opts, seeds=seeds, backend="triton")
        same_counts = bool(torch.equal(nf, nf_ref))
        log_domain = not (isinstance(opts, FbankOptions) and not opts.use_log_fbank)
        diff = (got - ref).abs()
        if not log_domain:  # linear energies: relative error
            diff = diff / ref.abs().clamp_min(1.0)
        err = float(diff.max())
        pad_zero = all(bool((got[i, int(nf[i]) :] == 0).all()) for i in range(len(lens)))
        ok = same_counts and pad_zero and got.shape == ref.shape and err <= 1e-4
        failed += not ok
        print(
            json.dumps(
                {
                    "case": name,
                    "max_err": err,
                    "counts": same_counts,
                    "pad_zero": pad_zero,
                    "ok": ok,
                }
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
