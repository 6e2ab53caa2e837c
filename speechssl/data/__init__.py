"""Kaldi data directories, audio loading, batching, corpus preparation."""
