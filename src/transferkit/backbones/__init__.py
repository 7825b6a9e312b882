"""Pretrained backbones: the registry (plain data, no TensorFlow), and one module per family (efficientnet_lite,
keras_applications) with its modality, builder, preprocessing (inside the model) and block boundaries.
`build.build_backbone` is the one entry point; `build.FAMILIES` maps a family to its module."""
