"""Training: state, the step factory, the loop with checkpoints."""

from gdl_jax.train.state import TrainState, ema_update
from gdl_jax.train.step import make_train_step, tree_l2
from gdl_jax.train.task import Task

__all__ = ["TrainState", "ema_update", "make_train_step", "tree_l2", "Task"]
