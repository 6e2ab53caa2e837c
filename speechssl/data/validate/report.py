"""What ``validate`` is asked (:class:`ValidateOptions`) and what it found
(:class:`Problem`, :class:`ValidationReport`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from speechssl.errors import ConfigError

ERROR, WARNING = "error", "warning"
LEVELS = ("fast", "default", "strict")


@dataclass(kw_only=True)
class ValidateOptions:
    """What ``validate`` checks and how hard."""

    level: str = "default"
    """``fast`` (text files only), ``default`` (plus audio headers), ``strict`` (decode all)."""
    nj: int = 1
    """Processes for the audio checks."""
    audio_sample: int | None = None
    """Recordings whose audio is checked; ``None``: 10000 at ``default``, all at ``strict``;
    0: all."""
    seed: int = 0
    """Seed of the audio sample."""
    sample_rate: int | None = None
    """Expected sample rate; other rates are errors (``None``: mixed rates are a warning)."""
    allow_pipes: bool = False
    """Accept ``cmd |`` entries in wav.scp (the audio checks then run them)."""
    require_text: bool = False
    """A missing ``text`` file is an error (SSL data dirs need none)."""
    spk_sort: bool = True
    """utt2spk not sorted by speaker is an error (Kaldi's rule); false makes it a warning."""
    non_print: bool = False
    """Allow control characters in text (Kaldi's ``--non-print``)."""
    duration_tolerance: float = 0.02
    """Seconds two duration sources (utt2dur, segments, reco2dur, header) may disagree."""
    segment_overshoot: float = 0.05
    """Seconds a segment may end past its recording before it is an error."""
    keep_per_code: int = 100
    """Problems kept (for printing) per kind and file; the rest are only counted."""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(f"level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.nj < 1:
            raise ConfigError(f"nj must be >= 1, got {self.nj}")
        if self.audio_sample is not None and self.audio_sample < 0:
            raise ConfigError(f"audio_sample must be >= 0, got {self.audio_sample}")


@dataclass(frozen=True)
class Problem:
    """One finding: ``file:line: key: reason``."""

    severity: str
    code: str
    file: str
    line: int | None
    key: str | None
    reason: str

    def format(self) -> str:
        loc = self.file if self.line is None else f"{self.file}:{self.line}"
        key = f" {self.key}:" if self.key is not None else ""
        return f"{self.severity}: {loc}:{key} {self.reason} [{self.code}]"

    def to_json(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "code": self.code,
            "file": self.file,
            "line": self.line,
            "key": self.key,
            "reason": self.reason,
        }


@dataclass
class ValidationReport:
    """All problems found (the first ``keep_per_code`` of each kind kept, all counted)."""

    data_dir: str
    keep_per_code: int = 100
    problems: list[Problem] = field(default_factory=list)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        severity: str,
        code: str,
        file: str,
        line: int | None,
        key: str | None,
        reason: str,
    ) -> None:
        group = (severity, code, file)
        self.counts[group] += 1
        if self.keep_per_code <= 0 or self.counts[group] <= self.keep_per_code:
            self.problems.append(Problem(severity, code, file, line, key, reason))

    def error(self, code: str, file: str, line: int | None, key: str | None, reason: str) -> None:
        self.add(ERROR, code, file, line, key, reason)

    def warning(self, code: str, file: str, line: int | None, key: str | None, reason: str) -> None:
        self.add(WARNING, code, file, line, key, reason)

    @property
    def num_errors(self) -> int:
        return sum(n for (sev, _, _), n in self.counts.items() if sev == ERROR)

    @property
    def num_warnings(self) -> int:
        return sum(n for (sev, _, _), n in self.counts.items() if sev == WARNING)

    @property
    def ok(self) -> bool:
        return self.num_errors == 0

    def codes(self, severity: str | None = None) -> set[str]:
        """Kinds of problem found (optionally of one severity)."""
        return {c for (sev, c, _) in self.counts if severity in (None, sev)}

    def lines(self, max_per_code: int = 20) -> list[str]:
        """Printable lines: problems (``max_per_code`` per kind and file), then omissions."""
        shown: Counter[tuple[str, str, str]] = Counter()
        out: list[str] = []
        for p in self.problems:
            group = (p.severity, p.code, p.file)
            shown[group] += 1
            if max_per_code <= 0 or shown[group] <= max_per_code:
                out.append(p.format())
        for group, total in self.counts.items():
            printed = min(total, max_per_code) if max_per_code > 0 else total
            if total > printed:
                sev, code, file = group
                out.append(f"{sev}: {file}: ... and {total - printed} more [{code}]")
        return out

    def summary(self) -> str:
        s = self.stats
        what = (
            f"{s.get('utterances', 0)} utterances, {s.get('recordings', 0)} recordings, "
            f"{s.get('speakers', 0)} speakers"
        )
        verdict = "OK" if self.ok else f"{self.num_errors} errors"
        return f"validate {self.data_dir}: {verdict}, {self.num_warnings} warnings ({what})"

    def to_json(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "ok": self.ok,
            "errors": self.num_errors,
            "warnings": self.num_warnings,
            "counts": [
                {"severity": s, "code": c, "file": f, "count": n}
                for (s, c, f), n in sorted(self.counts.items())
            ],
            "problems": [p.to_json() for p in self.problems],
            "stats": self.stats,
            "notes": self.notes,
        }
