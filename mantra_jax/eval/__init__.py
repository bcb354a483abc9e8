"""Forgery-benchmark evaluation: pixel metrics from per-image statistics, benchmark folder
layouts, reports and panels. ``experiments/evaluate.py`` is the command line."""
