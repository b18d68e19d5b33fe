"""CMA-ES from evosax (ask / tell as pure functions of a state), minimising; fitness is the negated
return. A thin wrapper that fixes the population size and initial step size and jits both halves."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class CMAES:
  """evosax's CMA_ES over a flat vector of `num_params`: init -> (ask -> tell)* ."""

  num_params: int
  population: int
  sigma0: float = 0.1

  def _es(self):
    return _evosax(int(self.num_params), int(self.population), float(self.sigma0))

  def init(self, key: jax.Array, x0: jax.Array) -> Any:
    es, params, _, _ = self._es()
    return es.init(key, jnp.asarray(x0, jnp.float32), params)

  def ask(self, key: jax.Array, state) -> tuple[jax.Array, Any]:
    """[population, num_params] candidates and the state."""
    _, params, ask, _ = self._es()
    return ask(key, state, params)

  def tell(self, key: jax.Array, population: jax.Array, fitness: jax.Array, state) -> Any:
    """fitness [population]: lower is better (pass -return)."""
    _, params, _, tell = self._es()
    state, _ = tell(key, population, jnp.asarray(fitness, jnp.float32), state, params)
    return state

  @staticmethod
  def mean(state) -> jax.Array:
    """The search distribution's mean: the solution to deploy."""
    return state.mean


@functools.lru_cache(maxsize=8)
def _evosax(num_params: int, population: int, sigma0: float):
  """(es, params, jitted ask, jitted tell), built once per setting (jit caches per function)."""
  from gdl_jax.world.env import require
  require("evosax")
  from evosax.algorithms import CMA_ES
  es = CMA_ES(population_size=population, solution=jnp.zeros((num_params,)))
  params = es.default_params.replace(std_init=jnp.asarray(sigma0, jnp.float32))
  return es, params, jax.jit(es.ask), jax.jit(es.tell)


def minimize(f: Callable[[jax.Array], jax.Array], x0: jax.Array, key: jax.Array, *,
             population: int = 16, sigma0: float = 0.5, generations: int = 50):
  """Runs CMA-ES on a batched f ([P, n] -> [P]) for `generations`: (mean, best f per generation)."""
  es = CMAES(int(x0.shape[0]), population, sigma0)
  key, k0 = jax.random.split(key)
  state = es.init(k0, x0)
  best = []
  for g in range(generations):
    k_ask, k_tell = jax.random.split(jax.random.fold_in(key, g))
    pop, state = es.ask(k_ask, state)
    fit = f(pop)
    best.append(float(jnp.min(fit)))
    state = es.tell(k_tell, pop, fit, state)
  return es.mean(state), best
