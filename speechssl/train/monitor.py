"""Training health output: JSON-lines log, TensorBoard scalars, a progress bar, MFU.

``<exp>/log.jsonl`` holds one JSON object per line with a ``kind``:

- ``train``: ``step``, ``epoch``, ``lr``, ``loss`` and every ``loss/<term>``, the model's
  metrics (``acc_masked``, ``acc_unmasked``, ``code_perplexity``, ...), ``grad_norm``,
  ``loss_scale``, ``audio_sec_per_sec``, ``padding_fraction``, ``crop_waste``,
  ``data_wait_fraction``, ``skipped_steps``, ``mfu`` (GPU, when known); averages over the
  updates since the previous record.
- ``dev``: ``step`` and the dev loss terms and metrics.
- ``event``: ``event`` is ``start``, ``resume``, ``data``, ``plan``, ``skipped_utterance``,
  ``empty_step``, ``nonfinite``, ``checkpoint``, ``best``, ``export``, ``stop`` or ``done``,
  with details.

The log is append-only (a crash can tear at most its last line, which readers skip); on
resume it is rewritten atomically without the records past the checkpoint's step, so it
always reads as one history.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from speechssl.utils.atomic import atomic_open

LOG_NAME = "log.jsonl"


def _clean(value: Any) -> Any:
    """JSON-safe value: non-finite floats become strings ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a ``log.jsonl`` (a torn last line is skipped)."""
    p = Path(path)
    if p.is_dir():
        p = p / LOG_NAME
    records: list[dict[str, Any]] = []
    with open(p, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if i >= len(lines) - 2:  # torn last line of a killed run
                continue
            raise
    return records


def iter_kind(records: list[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    return (r for r in records if r.get("kind") == kind)


class RunLogger:
    """Writes the JSON-lines log and TensorBoard scalars (rank 0 only) and drives tqdm.

    Args:
        exp_dir: experiment dir.
        enabled: False on ranks other than 0 (everything becomes a no-op).
        resume_step: the step a resumed run starts from (later records are dropped).
        tensorboard: write TensorBoard event files under ``exp_dir/tb``.
        progress_bar: show tqdm.
        total_steps: the progress bar's total.
    """

    def __init__(
        self,
        exp_dir: str | os.PathLike[str],
        *,
        enabled: bool = True,
        resume_step: int | None = None,
        tensorboard: bool = True,
        progress_bar: bool = True,
        total_steps: int = 0,
    ) -> None:
        self.enabled = enabled
        self.path = Path(exp_dir) / LOG_NAME
        self._fh: IO[str] | None = None
        self._tb: Any = None
        self._bar: Any = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._truncate_after(resume_step if resume_step is not None else 0)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(Path(exp_dir) / "tb"),
                purge_step=(resume_step + 1) if resume_step else None,
            )
        if progress_bar:
            import sys

            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps,
                initial=resume_step or 0,
                unit="step",
                dynamic_ncols=True,
                desc="train",
                # a log file (not a terminal) gets a line every half minute, not every 0.1 s
                mininterval=0.1 if sys.stderr.isatty() else 30.0,
            )

    def _truncate_after(self, step: int) -> None:
        """Keep only records up to ``step`` (a fresh run keeps none)."""
        kept = [r for r in read_log(self.path) if int(r.get("step", 0)) <= step] if step else []
        with atomic_open(self.path, "w") as fh:
            for record in kept:
                fh.write(json.dumps(record, sort_keys=True) + "\n")

    def write(self, kind: str, record: dict[str, Any]) -> None:
        if not self.enabled or self._fh is None:
            return
        full = {
            "kind": kind,
            "time": round(time.time(), 3),
            **{k: _clean(v) for k, v in record.items()},
        }
        self._fh.write(json.dumps(full, sort_keys=True) + "\n")
        self._fh.flush()
        if self._tb is not None and kind in ("train", "dev") and "step" in record:
            step = int(record["step"])
            for key, value in record.items():
                if key in ("step", "epoch") or isinstance(value, bool):
                    continue
                if isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def event(self, name: str, **details: Any) -> None:
        self.write("event", {"event": name, **details})

    def progress(self, steps: int, **postfix: float) -> None:
        if self._bar is None:
            return
        if steps:
            self._bar.update(steps)
        if postfix:
            short = {"audio_sec_per_sec": "audio_s/s"}
            self._bar.set_postfix(
                {short.get(k, k): f"{v:.4g}" for k, v in postfix.items()}, refresh=False
            )

    def message(self, text: str) -> None:
        """A line for the user that does not break the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None
