"""The text rules of ``validate``, one function per table or rule, run in :data:`RULES` order.

Each rule takes the run's :class:`~speechssl.data.validate.scan.DirCheck`, scans its table(s)
with a row hook (and, where a whole clean block can be accepted at once, a block hook) and
reports through it; facts later rules need (``reco2dur``, the recordings segments use) are
left on the :class:`DirCheck`.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections.abc import Callable

from speechssl.data.kaldi_dir import RECO, SPK, UTT, extra_table_kind, parse_wav_entry
from speechssl.data.tables import iter_rows
from speechssl.data.validate.audio import check_audio
from speechssl.data.validate.scan import BlockHook, DirCheck, RowHook, merge_join
from speechssl.data.validate.values import finite_span, positive, positive_block

#: words Kaldi reserves in a lexicon/LM: sentence boundaries, epsilon, disambiguation symbols
_ILLEGAL_WORD = re.compile(r"^(?:<s>|</s>|<eps>|#\d+)$")
#: control characters (tab allowed); Kaldi's "non-printable" check
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROL_BLOCK = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: a reserved word anywhere in a block (a hit sends the block through the per-row check)
_ILLEGAL_BLOCK = re.compile(r"(?:^|[ \t])(?:<s>|</s>|<eps>|#\d+)(?=[ \t]|$)", re.M)


def check_required_files(c: DirCheck) -> None:
    """utt2spk, spk2utt and wav.scp exist (and text, with ``require_text``)."""
    for name in ("utt2spk", "spk2utt", "wav.scp"):
        if not c.has(name):
            c.err("missing-file", name, None, None, f"required file {name} is missing")
    if c.opts.require_text and not c.has("text"):
        c.err("missing-file", "text", None, None, "text is missing (--require-text)")
    c.has_segments = c.has("segments")


def check_wav_scp(c: DirCheck) -> None:
    """Shell-command entries need ``allow_pipes``; no ``~`` paths."""
    pipes = 0

    def hook(lineno: int, key: str, rest: list[str], line: str) -> None:
        nonlocal pipes
        path, pipe = parse_wav_entry(line.split(maxsplit=1)[1])
        if pipe:
            pipes += 1
            if not c.opts.allow_pipes:
                c.err(
                    "pipe-entry",
                    "wav.scp",
                    lineno,
                    key,
                    "entry is a shell command ('cmd |'); it runs only with --allow-pipes",
                )
        elif path.startswith("~"):
            c.err("tilde", "wav.scp", lineno, key, "path starts with ~ (not expanded)")

    def block(base: int, rows: list[list[str]], lines: list[str], text: str, plain: bool) -> bool:
        return "|" not in text and "~" not in text

    c.scan("wav.scp", hook, block)
    if c.has_segments and not c.has("wav.scp"):
        c.err("missing-file", "wav.scp", None, None, "segments exists but wav.scp does not")
    c.report.stats["pipe_entries"] = pipes


def check_reco2dur(c: DirCheck) -> None:
    """Durations are positive; kept in memory when segments are checked against them."""
    table: dict[str, float] | None = {} if c.has_segments else None

    def hook(lineno: int, key: str, rest: list[str], line: str) -> None:
        dur = positive(rest[0], integer=False)
        if dur is None:
            c.err("bad-value", "reco2dur", lineno, key, f"duration {rest[0]!r} is not > 0")
        elif table is not None:
            table[key] = dur

    def block(base: int, rows: list[list[str]], lines: list[str], text: str, plain: bool) -> bool:
        vals = positive_block([r[1] for r in rows], integer=False)
        if vals is None:
            return False
        if table is not None:
            table.update(zip((r[0] for r in rows), vals))
        return True

    if c.scan("reco2dur", hook, block) is not None:
        c.reco2dur = table


def check_segments(c: DirCheck) -> None:
    """``utt reco start end``, finite ``0 <= start < end``, known recordings, inside
    ``reco2dur``; every recording of wav.scp is used."""
    if not c.has_segments:
        return
    wav_keys = {k for _, k in c.keys_of("wav.scp")} if c.has("wav.scp") else set()
    recos: set[str] = set()
    overshoot = c.opts.segment_overshoot
    reco2dur = c.reco2dur

    def hook(lineno: int, key: str, rest: list[str], line: str) -> None:
        reco, s_start, s_end = rest
        recos.add(reco)
        try:
            start, end = float(s_start), float(s_end)
        except ValueError:
            c.err("bad-segment", "segments", lineno, key, "start/end are not numbers")
            return
        if not (math.isfinite(start) and math.isfinite(end)):
            c.err("bad-segment", "segments", lineno, key, "start/end are not finite")
        elif start < 0:
            c.err("bad-segment", "segments", lineno, key, f"start {start} < 0")
        elif end <= start:
            c.err("bad-segment", "segments", lineno, key, f"end {end} <= start {start}")
        if reco not in wav_keys:
            c.err("unknown-recording", "segments", lineno, key, f"recording {reco} not in wav.scp")
        elif (
            reco2dur is not None
            and reco in reco2dur
            and math.isfinite(end)
            and end > reco2dur[reco] + overshoot
        ):
            c.err(
                "segment-outside",
                "segments",
                lineno,
                key,
                f"ends at {end} s, after the end of {reco} ({reco2dur[reco]} s in reco2dur)",
            )

    def block(base: int, rows: list[list[str]], lines: list[str], text: str, plain: bool) -> bool:
        spans = [finite_span(r[2], r[3]) for r in rows]
        if None in spans or not all(r[1] in wav_keys for r in rows):
            return False
        if reco2dur is not None:
            for r, span in zip(rows, spans):
                assert span is not None
                if span[1] > reco2dur.get(r[1], math.inf) + overshoot:
                    return False
        recos.update(r[1] for r in rows)
        return True

    c.scan("segments", hook, block)
    for reco in sorted(wav_keys - recos):
        c.err(
            "unused-recording",
            "wav.scp",
            None,
            reco,
            "recording used by no segment (Kaldi requires none)",
        )
    c.seg_recos = recos


def check_utt2spk_spk2utt(c: DirCheck) -> None:
    """utt2spk sorted by speaker too; spk2utt lists sorted; the two hold the same pairs
    (an order-free hash of the pairs; a per-pair search only when they differ)."""
    mask = (1 << 64) - 1
    acc_u2s = acc_s2u = 0
    n_u2s = n_s2u = 0
    prev_spk: str | None = None
    spk_sorted = True

    def u2s_hook(lineno: int, key: str, rest: list[str], line: str) -> None:
        nonlocal acc_u2s, n_u2s, prev_spk, spk_sorted
        spk = rest[0]
        acc_u2s = (acc_u2s + hash((key, spk))) & mask
        n_u2s += 1
        if prev_spk is not None and spk < prev_spk and spk_sorted:
            spk_sorted = False
            reason = (
                "utt2spk is not sorted by speaker as well as by utterance (make speaker "
                "ids prefixes of utterance ids)"
            )
            report = c.err if c.opts.spk_sort else c.warn
            report("not-sorted-by-speaker", "utt2spk", lineno, key, reason)
        prev_spk = spk

    def s2u_hook(lineno: int, key: str, rest: list[str], line: str) -> None:
        nonlocal acc_s2u, n_s2u
        prev: str | None = None
        for utt in rest:
            acc_s2u = (acc_s2u + hash((utt, key))) & mask
            n_s2u += 1
            if prev is not None and utt <= prev:
                c.err("not-sorted", "spk2utt", lineno, key, f"utterance list not sorted at {utt}")
                break
            prev = utt

    def u2s_block(
        base: int, rows: list[list[str]], lines: list[str], text: str, plain: bool
    ) -> bool:
        nonlocal acc_u2s, n_u2s, prev_spk
        spks = [r[1] for r in rows]
        if prev_spk is not None and spks[0] < prev_spk:
            return False
        if not all(map(operator.le, spks, itertools.islice(spks, 1, None))):
            return False
        acc_u2s = (acc_u2s + sum(map(hash, map(tuple, rows)))) & mask
        n_u2s += len(rows)
        prev_spk = spks[-1]
        return True

    def s2u_block(
        base: int, rows: list[list[str]], lines: list[str], text: str, plain: bool
    ) -> bool:
        nonlocal acc_s2u, n_s2u
        for r in rows:
            if not all(
                map(operator.lt, itertools.islice(r, 1, None), itertools.islice(r, 2, None))
            ):
                return False
        for r in rows:
            spk = r[0]
            acc_s2u = (acc_s2u + sum(hash((u, spk)) for u in r[1:])) & mask
            n_s2u += len(r) - 1
        return True

    u2s = c.scan("utt2spk", u2s_hook, u2s_block)
    s2u = c.scan("spk2utt", s2u_hook, s2u_block)
    if u2s is None or s2u is None or (acc_u2s == acc_s2u and n_u2s == n_s2u):
        return
    _report_spk2utt_mismatch(c)


def _report_spk2utt_mismatch(c: DirCheck) -> None:
    # they disagree: find out where (this needs both in memory, only on failure)
    utt2spk: dict[str, tuple[int, str]] = {}
    for lineno, key, rest in iter_rows(c.dir / "utt2spk"):
        if len(rest) == 1:
            utt2spk.setdefault(key, (lineno, rest[0]))
    listed: dict[str, str] = {}
    for lineno, spk, utts in iter_rows(c.dir / "spk2utt"):
        for utt in utts:
            if utt in listed:
                c.err("spk2utt-mismatch", "spk2utt", lineno, spk, f"{utt} is listed twice")
                continue
            listed[utt] = spk
            if utt not in utt2spk:
                c.err("spk2utt-mismatch", "spk2utt", lineno, spk, f"{utt} is not in utt2spk")
            elif utt2spk[utt][1] != spk:
                c.err(
                    "spk2utt-mismatch",
                    "spk2utt",
                    lineno,
                    spk,
                    f"{utt} belongs to {utt2spk[utt][1]} in utt2spk",
                )
    for utt, (lineno, spk) in utt2spk.items():
        if utt not in listed:
            c.err("spk2utt-mismatch", "utt2spk", lineno, utt, f"not listed under {spk} in spk2utt")


def check_text(c: DirCheck) -> None:
    """No empty transcripts (a warning), control characters or reserved symbols; the same
    utterances as utt2spk."""
    non_print = c.opts.non_print
    control = _CONTROL.search

    def hook(lineno: int, key: str, rest: list[str], line: str) -> None:
        if not rest:
            c.warn("empty-text", "text", lineno, key, "empty transcript")
            return
        if not non_print and control(line):
            c.err("non-printable", "text", lineno, key, "contains control characters")
        for word in rest:
            if _ILLEGAL_WORD.match(word):
                c.err(
                    "illegal-symbol",
                    "text",
                    lineno,
                    key,
                    f"reserved symbol {word} (sentence boundary, epsilon or disambiguation symbol)",
                )

    def block(base: int, rows: list[list[str]], lines: list[str], text: str, plain: bool) -> bool:
        if min(map(len, rows)) < 2:
            return False
        if not plain and not non_print and _CONTROL_BLOCK.search(text):
            return False
        if "<" not in text and "#" not in text:
            return True
        return _ILLEGAL_BLOCK.search(text) is None

    c.scan("text", hook, block)
    c.compare_keys("utt2spk", "text", "utterance")


def _positive_rule(c: DirCheck, name: str, integer: bool) -> tuple[RowHook, BlockHook]:
    want = "a positive integer" if integer else "a positive number"

    def hook(lineno: int, key: str, rest: list[str], line: str) -> None:
        if positive(rest[0], integer=integer) is None:
            c.err("bad-value", name, lineno, key, f"{rest[0]!r} is not {want}")

    def block(base: int, rows: list[list[str]], lines: list[str], text: str, plain: bool) -> bool:
        return positive_block([r[1] for r in rows], integer=integer) is not None

    return hook, block


def _warp_hook(c: DirCheck, name: str) -> RowHook:
    def hook(lineno: int, key: str, rest: list[str], line: str) -> None:
        try:
            ok = 0.5 < float(rest[0]) < 1.5
        except ValueError:
            ok = False
        if not ok:
            c.err("bad-value", name, lineno, key, f"warp factor {rest[0]!r} not in (0.5, 1.5)")

    return hook


def check_per_utt_files(c: DirCheck) -> None:
    """utt2dur positive, utt2num_samples/utt2num_frames positive integers, utt2warp in
    (0.5, 1.5); every per-utterance file holds the utterances of utt2spk."""
    hooks: dict[str, tuple[RowHook | None, BlockHook | None]] = {
        "utt2dur": _positive_rule(c, "utt2dur", False),
        "utt2num_samples": _positive_rule(c, "utt2num_samples", True),
        "utt2num_frames": _positive_rule(c, "utt2num_frames", True),
        "utt2warp": (_warp_hook(c, "utt2warp"), None),
        "feats.scp": (None, None),
        "vad.scp": (None, None),
        "utt2lang": (None, None),
        "utt2uniq": (None, None),
    }
    for name, (hook, block) in hooks.items():
        c.scan(name, hook, block)
    for name in [*hooks, "segments" if c.has_segments else "wav.scp"]:
        c.compare_keys("utt2spk", name, "utterance")


def check_speaker_files(c: DirCheck) -> None:
    """spk2gender is m/f, spk2warp in (0.5, 1.5); speaker files cover spk2utt's speakers."""

    def gender(lineno: int, key: str, rest: list[str], line: str) -> None:
        if rest[0] not in ("m", "f"):
            c.err("bad-value", "spk2gender", lineno, key, f"gender {rest[0]!r} is not m or f")

    c.scan("spk2gender", gender)
    c.scan("cmvn.scp")
    c.scan("spk2warp", _warp_hook(c, "spk2warp"))
    for name in ("spk2gender", "cmvn.scp", "spk2warp"):
        c.compare_keys("spk2utt", name, "speaker")


def check_recording_files(c: DirCheck) -> None:
    """reco2file_and_channel channels are A/B; recording files cover the recordings."""
    channel_one = 0

    def r2fc(lineno: int, key: str, rest: list[str], line: str) -> None:
        nonlocal channel_one
        if rest[1] == "1":
            channel_one += 1
        elif rest[1] not in ("A", "B"):
            c.err(
                "bad-value",
                "reco2file_and_channel",
                lineno,
                key,
                f"channel {rest[1]!r} is not A or B",
            )

    c.scan("reco2file_and_channel", r2fc)
    if channel_one:
        c.warn(
            "bad-value",
            "reco2file_and_channel",
            None,
            None,
            f"{channel_one} lines mark the channel as 1; Kaldi expects A or B",
        )
    ref = "wav.scp" if c.has_segments else "utt2spk"
    for name in ("reco2dur", "reco2file_and_channel"):
        c.compare_keys(ref, name, "recording")


def check_duration_agreement(c: DirCheck) -> None:
    """utt2dur agrees with segments (or, without segments, with reco2dur)."""
    if not c.has("utt2dur"):
        return
    tol = c.opts.duration_tolerance
    other = "segments" if c.has_segments else "reco2dur"
    u2d, o = c.scans.get("utt2dur"), c.scans.get(other)
    if u2d is None or o is None or not (u2d.orderly and o.orderly):
        return
    for key, a, b in merge_join(c.dir / "utt2dur", c.dir / other):
        if a is None or b is None:
            continue  # key mismatches are reported elsewhere
        dur = positive(a[1][0], integer=False)
        if c.has_segments:
            span = finite_span(b[1][1], b[1][2]) if len(b[1]) == 3 else None
            if span is None:
                continue  # a bad segment, reported by check_segments
            ref = span[1] - span[0]
        else:
            ref_opt = positive(b[1][0], integer=False)
            if ref_opt is None:
                continue
            ref = ref_opt
        if dur is not None and abs(dur - ref) > tol:
            c.err(
                "duration-mismatch", "utt2dur", a[0], key, f"{dur} s but {other} says {ref:.4f} s"
            )


def check_extra_tables(c: DirCheck) -> None:
    """Extra keyed tables (``utt2*``, ``spk2*``, ``reco2*``, ``text.*``, ``ali.*``): well
    formed, sorted, and naming only known keys (they may cover a subset)."""
    refs = {UTT: "utt2spk", SPK: "spk2utt", RECO: "wav.scp" if c.has_segments else "utt2spk"}
    for path in sorted(c.dir.iterdir()):
        kind = extra_table_kind(path.name) if path.is_file() else None
        if kind is None:
            continue
        c.scan(path.name)
        c.compare_keys(refs[kind], path.name, kind, subset=True)


def check_counts(c: DirCheck) -> None:
    """Counts for the summary; one speaker only is a warning."""
    scans = c.scans
    c.report.stats.update(
        utterances=scans["utt2spk"].lines if "utt2spk" in scans else 0,
        recordings=scans["wav.scp"].lines if "wav.scp" in scans else 0,
        speakers=scans["spk2utt"].lines if "spk2utt" in scans else 0,
        level=c.opts.level,
    )
    if c.report.stats["speakers"] == 1:
        c.warn(
            "one-speaker",
            "spk2utt",
            None,
            None,
            "only one speaker (per-speaker normalisation and speaker splits degenerate)",
        )


def check_audio_level(c: DirCheck) -> None:
    """The audio rules (see :mod:`speechssl.data.validate.audio`), unless ``level=fast``."""
    if c.opts.level != "fast" and "wav.scp" in c.scans:
        check_audio(c)


#: every rule, in the order it runs (later rules use what earlier ones left on the DirCheck)
RULES: tuple[Callable[[DirCheck], None], ...] = (
    check_required_files,
    check_wav_scp,
    check_reco2dur,
    check_segments,
    check_utt2spk_spk2utt,
    check_text,
    check_per_utt_files,
    check_speaker_files,
    check_recording_files,
    check_duration_agreement,
    check_extra_tables,
    check_counts,
    check_audio_level,
)
