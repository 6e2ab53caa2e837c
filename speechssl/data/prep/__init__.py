"""Data preparation for real corpora: their on-disk layouts -> validated Kaldi data dirs.

Each preparer walks the corpus's real directory layout, names every missing or extra file
as an error (or, in tolerant mode, skips and counts it: ``written + skipped == input``),
reads each audio header once (durations, sample counts), and writes the data dir atomically
after validating it, so a half-written or invalid dir never appears under the output name.
"""
