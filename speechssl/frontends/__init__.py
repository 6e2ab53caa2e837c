"""Front ends: raw input (waveform, fbank, image) -> :class:`~speechssl.core.frames.Frames`."""
