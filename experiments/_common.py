"""Shared experiment helpers (the config block lives in gdl_jax.configs)."""

from gdl_jax.configs import base_config, shrink

__all__ = ["base_config", "shrink"]
