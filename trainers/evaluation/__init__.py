"""Measuring agents: ``agentenv eval`` (a rollout without updates, under the run's environment
spec), the experiment runner's table, best-of-N, plots of a run, the episode viewer."""
