"""The `evaluate` stage: test-split metrics and plots of the published model, beside the head-only model."""
