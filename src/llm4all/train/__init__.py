"""llm4all.train: one explicit training loop (train and distil), sampler, checkpoints."""
