"""Image manipulation classification (IMC): the taxonomy of classes and the manipulation bank."""

from mantra_jax.imc import manipulations, taxonomy

__all__ = ["manipulations", "taxonomy"]
