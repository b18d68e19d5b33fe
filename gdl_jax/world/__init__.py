"""World Models (Ha & Schmidhuber 2018) on CarRacing-v3: the environment and its random policy
(env), rollout collection (collect), real-environment rollouts in worker processes (rollout), dream
rollouts inside M (dream) and CMA-ES from evosax (es). Needs the `world` extra; the experiment that
runs the stages is experiments/world_models.py (`gdl-jax world run`)."""
