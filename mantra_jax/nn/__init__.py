"""The ManTra-Net network: configuration, layers, Featex, LADN, and init/apply."""
from mantra_jax.nn.config import ModelConfig, make_config, released
from mantra_jax.nn.model import apply, init, preprocess, project
__all__ = ["ModelConfig", "make_config", "released", "apply", "init", "preprocess", "project"]
