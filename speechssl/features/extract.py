"""Features of a data dir's utterances computed in batches and handed out one utterance at a
time, without writing them anywhere: what a feature dump writes to a store, and what
``kmeans apply --data`` labels straight away.

Utterances are batched by length (longest first, at most ``batch_seconds`` of padded audio
and ``max_batch`` utterances per batch). A bad utterance (unreadable audio, no frames) is
handed to ``on_bad``, which raises (strict) or records it (tolerant).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from speechssl.data.audio import AudioError, LoadOptions, load_utterance
from speechssl.data.kaldi_dir import KaldiDataDir
from speechssl.errors import ItemError
from speechssl.features.dump import DumpOptions, TooShortError, _batches
from speechssl.features.extractors import FeatureExtractor


def iter_features(
    data_dir: KaldiDataDir,
    utts: Sequence[str],
    extractor: FeatureExtractor,
    opts: DumpOptions,
    on_bad: Callable[[str, ItemError], None],
) -> Iterator[tuple[str, torch.Tensor, float]]:
    """``(utt, features [frames, dim] float32 on CPU, seconds of audio)`` for each good
    utterance of ``utts``, in batch order; bad ones go to ``on_bad``."""
    load_opts = LoadOptions(sample_rate=extractor.sample_rate)
    sized: list[tuple[str, float]] = []
    for utt in utts:
        try:
            sized.append((utt, data_dir.duration(utt)))
        except ItemError as err:
            on_bad(utt, err)
    for batch in _batches(sized, opts):
        loaded: list[tuple[str, torch.Tensor]] = []
        for utt in batch:
            try:
                wave, _ = load_utterance(data_dir, utt, load_opts)
            except (AudioError, ItemError) as err:
                on_bad(utt, err)
                continue
            loaded.append((utt, wave))
        if not loaded:
            continue
        lengths = torch.tensor([len(w) for _, w in loaded])
        waves = torch.zeros(len(loaded), int(lengths.max()))
        for i, (_, w) in enumerate(loaded):
            waves[i, : len(w)] = w
        feats, nframes = extractor(waves, lengths, [u for u, _ in loaded])
        feats_cpu, nf_cpu = feats.float().cpu(), nframes.cpu().tolist()
        for i, (utt, _) in enumerate(loaded):
            n = int(nf_cpu[i])
            secs = int(lengths[i]) / extractor.sample_rate
            if n == 0:
                reason = (
                    f"{int(lengths[i])} samples ({secs:.3f} s) give no frames with this extractor"
                )
                on_bad(utt, TooShortError(utt, reason))
                continue
            yield utt, feats_cpu[i, :n], secs
