"""Pretrained backbones: the registry (plain data, no TensorFlow), and one module per family with its builder,
preprocessing (inside the model) and block boundaries. `build.build_backbone` is the one entry point."""
