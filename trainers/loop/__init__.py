"""``agentenv train``: the typed config, the training loop (sample, update, sync, log, checkpoint),
checkpoints that survive ``kill -9``, and the metrics a run writes."""
