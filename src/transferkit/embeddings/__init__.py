"""Frozen-backbone embeddings: the `extract` stage, the content-addressed store shared by every backbone, and the
per-manifest table that the training stages read."""
