"""Evaluation of saved models: forgery benchmarks (folder layouts; ``experiments/evaluate.py`` is
the command line), IMC evaluation, KCMI, sensitivity. The metrics themselves are mantra_jax.metrics."""
