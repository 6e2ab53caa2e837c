"""speechssl: self-supervised learning of speech and audio representations."""

__version__ = "0.1.0"
