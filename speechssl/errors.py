"""Typed errors shared by every stage.

Every error raised on bad input names the item (file, line, utterance) and the reason, so a
user can find and fix it. Tolerant modes catch :class:`ItemError` subclasses, count them and
report them; anything else is a bug and propagates.
"""

from __future__ import annotations


class SpeechSSLError(Exception):
    """Base class of every error speechssl raises on purpose."""


class ConfigError(SpeechSSLError, ValueError):
    """A configuration value is invalid (names the field and the reason)."""


class ItemError(SpeechSSLError):
    """A single input item (utterance, file, line) is bad.

    Attributes:
        item: the key of the bad item (utterance id, file path, ...).
        reason: a short human-readable reason.
        where: optional location (``file:line``).
    """

    kind = "bad-item"

    def __init__(self, item: str, reason: str, where: str | None = None) -> None:
        self.item = item
        self.reason = reason
        self.where = where
        loc = f" ({where})" if where else ""
        super().__init__(f"{item}{loc}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str | None]]:
        # rebuild from the fields, so the error survives pickling between worker processes
        return (type(self), (self.item, self.reason, self.where))


class DataDirError(ItemError):
    """A Kaldi data directory file is malformed or inconsistent."""

    kind = "data-dir"


class LabelError(ItemError):
    """Unit labels are missing, misaligned or inconsistent with their metadata."""

    kind = "labels"


class CheckpointError(SpeechSSLError):
    """A checkpoint is missing, partial or corrupt."""


class TrainingError(SpeechSSLError):
    """Training cannot go on (e.g. the loss stayed non-finite); the message says why and
    where the state was saved."""


class HubError(SpeechSSLError):
    """Talking to the Hugging Face hub failed (offline, network, refused); the message
    names the repo and the reason, never the token."""
