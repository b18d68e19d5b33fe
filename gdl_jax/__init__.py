"""gdl_jax: the models of *Generative Deep Learning* as pure-functional Flax models with jitted optax steps."""

__version__ = "0.1.0"
