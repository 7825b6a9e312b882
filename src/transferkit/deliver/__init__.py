"""What leaves the pipeline: the published model, the runtimes that run it or its exported files, the one batched
inference path, the `export` stage with its parity gate, and the served MLflow model."""
