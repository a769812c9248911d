"""Selection: keep a subset of documents by signals, embeddings or a model's judgement."""
