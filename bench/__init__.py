"""Benchmarks (not tests): ``python bench/run.py`` measures each figure side by side and compares it
with its target. One module per figure; see ``bench/run.py``."""
