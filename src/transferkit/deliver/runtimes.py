"""Every runtime that runs a model or its exported files, built in one place, with one call shape.

A runner takes a batch of a model's input and returns the model's output as
float32 (N, D). The input is, for an image model, one array of raw RGB pixels,
(N, size, size, 3) uint8 or float32 0..255; for a text model, a dict of its two
int32 arrays {"token_ids": ..., "padding_mask": ...}, (N, windows, tokens)
(backbones/bert.py: encode_texts). `runner(source, runtime)` builds one from a
Keras model or an exported file:

    tensorflow   a Keras model (keras_runner) or a SavedModel folder (saved_model_runner)
    litert       a .tflite file, or a Keras model converted first (to_litert, a few seconds)
    onnxruntime  an .onnx file
    onnx         a Keras model converted to ONNX first (to_onnx, as the export stage converts it), then
                 run by onnxruntime (`transferkit predict --runtime onnx`)

To add a runtime: write its `<name>_runner(source) -> Runner` below and add it
to RUNNERS; `runner` then builds it, and inference.predict_batches runs it.

The export stage's parity gate runs every exported file through its own
runtime; `extract`, `evaluate` and `predict` run the Keras model through
TensorFlow or LiteRT (LiteRT: faster on CPU; `predict` also through ONNX, to
compare with the browser page, which runs the exported ONNX file); the served
MLflow model runs the ONNX file. TensorFlow is imported only by what needs it (a Keras model, a
SavedModel, the converter): onnxruntime and the LiteRT interpreter start in a
fraction of a second without it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

# A batch: pixels (an image model), or {input name: array} (a text model's TEXT_INPUTS).
Batch = np.ndarray | dict[str, np.ndarray]
Runner = Callable[[Batch], np.ndarray]
TEXT_INPUTS = ("token_ids", "padding_mask")  # a text model's inputs, int32 (N, windows, tokens), in this order
ONNX_OUTPUT = "probabilities"  # the output's name in an ONNX file written by to_onnx
DEFAULT_ONNX_OPSET = 17  # params.yaml's export.onnx_opset as shipped: what keras_onnx_runner converts with


def threads() -> int:
    return os.cpu_count() or 1


def resolve(runtime: str, gpu: bool) -> str:
    """`auto`: LiteRT (XNNPACK) on CPU, where it runs the backbone about 1.8x faster; TensorFlow on a GPU."""
    if runtime == "auto":
        return "tensorflow" if gpu else "litert"
    return runtime


def runner(source, runtime: str) -> Runner:
    """A runner of `source` (a Keras model, or the path of an exported file) on `runtime` (a key of RUNNERS)."""
    if runtime not in RUNNERS:
        raise ValueError(f"runtime {runtime!r}: expected one of {', '.join(RUNNERS)}")
    return RUNNERS[runtime](source)


def tensorflow_runner(source) -> Runner:
    """A SavedModel folder (a path) or a Keras model."""
    return saved_model_runner(source) if isinstance(source, (str, Path)) else keras_runner(source)


def keras_runner(model) -> Runner:
    """The Keras model as one traced graph per input dtype (uint8, float32), for any batch size.

    The pixels are cast to float32 inside the graph (exact for 0..255), so a
    uint8 batch crosses to a GPU at a quarter of the bytes. The input
    signature leaves the batch size open: a last, smaller batch reuses the
    graph (a trace costs about 1.5 s for EfficientNet-Lite0). The only
    tf.function around a Keras model: extract's backbone, the parity gate's
    reference, `evaluate` and `predict` all run through it.
    """
    import tensorflow as tf

    if len(model.inputs) > 1:
        return _keras_text_runner(model)
    shape = (None, *model.input_shape[1:])
    graphs: dict[type, Callable] = {}

    def run(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        dtype = np.uint8 if x.dtype == np.uint8 else np.float32
        if dtype not in graphs:
            graphs[dtype] = tf.function(lambda t: tf.cast(model(tf.cast(t, tf.float32), training=False), tf.float32),
                                        input_signature=[tf.TensorSpec(shape, tf.as_dtype(dtype))])
        return graphs[dtype](x.astype(dtype, copy=False)).numpy()

    return run


def _keras_text_runner(model) -> Runner:
    """A text model (inputs TEXT_INPUTS) as one traced graph for any batch, window and token count."""
    import tensorflow as tf

    names = [tensor.name.split(":")[0] for tensor in model.inputs]
    if sorted(names) != sorted(TEXT_INPUTS):
        raise ValueError(f"a model of several inputs must take {' and '.join(TEXT_INPUTS)}, not {names}")
    spec = [tf.TensorSpec((None, None, None), tf.int32, name=name) for name in TEXT_INPUTS]
    graph = tf.function(lambda ids, mask: tf.cast(model({"token_ids": ids, "padding_mask": mask}, training=False),
                                                  tf.float32), input_signature=spec)

    def run(x: dict[str, np.ndarray]) -> np.ndarray:
        return graph(*(np.asarray(x[name], np.int32) for name in TEXT_INPUTS)).numpy()

    return run


def saved_model_runner(path: str | Path) -> Runner:
    """A SavedModel's `serving_default` signature (input `image`, or a text model's TEXT_INPUTS)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # kept referenced by the closure: its variables live with it
    signature = loaded.signatures["serving_default"]
    output = next(iter(signature.structured_outputs))

    def run(x: Batch) -> np.ndarray:
        if isinstance(x, dict):
            return signature(**{k: tf.constant(np.asarray(v, np.int32)) for k, v in x.items()})[output].numpy()
        return signature(image=tf.constant(np.asarray(x, np.float32)))[output].numpy()

    run.loaded = loaded  # type: ignore[attr-defined]
    return run


def litert_runner(source, num_threads: int | None = None) -> Runner:
    """A .tflite model (a path, or its bytes) through the LiteRT interpreter (XNNPACK on CPU); a Keras model
    is converted first (to_litert).

    The interpreter is resized when the batch size changes; it is not
    thread-safe, so calls are serialised.
    """
    from ai_edge_litert.interpreter import Interpreter

    if not isinstance(source, (str, Path, bytes)):
        source = to_litert(source)
    kwargs = {"model_content": source} if isinstance(source, bytes) else {"model_path": str(source)}
    interpreter = Interpreter(num_threads=num_threads or threads(), **kwargs)
    if len(interpreter.get_input_details()) > 1:
        return _litert_text_runner(interpreter)
    first, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    lock, shape = threading.Lock(), [None]

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=first["dtype"]) if first["dtype"] == np.float32 else _quantize(x, first)
        with lock:
            if shape[0] != x.shape:
                interpreter.resize_tensor_input(first["index"], x.shape)
                interpreter.allocate_tensors()
                shape[0] = x.shape
            interpreter.set_tensor(first["index"], x)
            interpreter.invoke()
            out = interpreter.get_tensor(target["index"])
        return _dequantize(out, target)

    return run


def _litert_text_runner(interpreter) -> Runner:
    """A text model's interpreter: inputs found by name (`serving_default_token_ids:0` holds `token_ids`)."""
    details = {name: next(d for d in interpreter.get_input_details() if name in d["name"]) for name in TEXT_INPUTS}
    target = interpreter.get_output_details()[0]
    lock, shape = threading.Lock(), [None]

    def run(x: dict[str, np.ndarray]) -> np.ndarray:
        arrays = {name: np.ascontiguousarray(x[name], np.int32) for name in TEXT_INPUTS}
        with lock:
            if shape[0] != arrays["token_ids"].shape:
                for name, detail in details.items():
                    interpreter.resize_tensor_input(detail["index"], arrays[name].shape)
                interpreter.allocate_tensors()
                shape[0] = arrays["token_ids"].shape
            for name, detail in details.items():
                interpreter.set_tensor(detail["index"], arrays[name])
            interpreter.invoke()
            out = interpreter.get_tensor(target["index"])
        return _dequantize(out, target)

    return run


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    return np.clip(np.round(np.asarray(x, np.float32) / scale + zero), -128, 127).astype(detail["dtype"])


def _dequantize(out: np.ndarray, detail: dict) -> np.ndarray:
    if out.dtype == np.float32:
        return out.copy()
    scale, zero = detail["quantization"]
    return (out.astype(np.float32) - zero) * scale


def onnx_runner(path: str | Path, num_threads: int | None = None) -> Runner:
    """An .onnx model through onnxruntime's CPU provider (thread-safe)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or threads()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: Batch) -> np.ndarray:
        if isinstance(x, dict):  # a text model: its inputs by name (tf2onnx keeps the Keras names)
            return session.run(None, {k: np.asarray(v, np.int32) for k, v in x.items()})[0]
        return session.run(None, {name: np.asarray(x, np.float32)})[0]

    return run


def keras_onnx_runner(model, opset: int = DEFAULT_ONNX_OPSET) -> Runner:
    """A Keras model converted to ONNX (to_onnx, into a temporary file) and run by onnxruntime: what the
    exported model.onnx computes, without an export folder."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="transferkit-onnx-") as folder:
        path = Path(folder) / "model.onnx"
        to_onnx(model, path, opset)
        return onnx_runner(path)  # onnxruntime has read the file: the session outlives it


RUNNERS: dict[str, Callable[..., Runner]] = {
    "tensorflow": tensorflow_runner,
    "litert": litert_runner,
    "onnxruntime": onnx_runner,
    "onnx": keras_onnx_runner,
}


def to_onnx(model, path: str | Path, opset: int) -> None:
    """The one ONNX converter (the export stage's model.onnx, and the `onnx` runner): Keras' own exporter
    (tf2onnx), the Normalization layers made constants, the output named ONNX_OUTPUT."""
    model = _with_constant_normalization(model)
    model(_sample_inputs(model))  # Keras exports only a model that has been called (a freshly loaded one has not)
    model.export(str(path), format="onnx", opset_version=opset, verbose=False)
    _rename_onnx_output(path, ONNX_OUTPUT)


def _with_constant_normalization(model):
    """The model with every keras Normalization layer (efficientnet_b0 has one) replaced by the
    equal Rescaling, the other layers shared.

    Normalization keeps its mean and variance as eager tensors; tf2onnx turns
    those into extra graph inputs the ONNX file then demands beside `image`.
    Rescaling's numpy constants are traced into the graph instead."""
    import keras

    def replace(layer):
        if not isinstance(layer, keras.layers.Normalization) or layer.invert:
            return layer
        mean, variance = (np.asarray(keras.ops.convert_to_numpy(v), np.float32) for v in (layer.mean, layer.variance))
        scale = 1.0 / np.maximum(np.sqrt(variance), keras.backend.epsilon())
        return keras.layers.Rescaling(scale=scale, offset=-mean * scale, name=layer.name)

    if not any(isinstance(layer, keras.layers.Normalization) for layer in _all_layers(model)):
        return model
    clone = keras.models.clone_model(model, clone_function=replace, recursive=True)
    clone(_sample_inputs(model))  # Keras exports only a model that has been called
    return clone


def _sample_inputs(model):
    """One item for each of the model's inputs (an image; a text's token ids and mask: one token, one window)."""
    arrays = [np.ones([1 if size is None else size for size in tensor.shape], dtype=tensor.dtype)
              for tensor in model.inputs]
    return arrays[0] if len(arrays) == 1 else arrays


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _rename_onnx_output(path: Path, name: str) -> None:
    """tf2onnx names the output `Identity:0`; call it what it is."""
    import onnx

    graph = onnx.load(str(path))
    old = graph.graph.output[0].name
    for node in graph.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
    graph.graph.output[0].name = name
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))




def to_litert(source, quantize: str = "none", calibration: np.ndarray | None = None) -> bytes:
    """The one LiteRT converter: a Keras model, or a SavedModel folder (a path), to .tflite bytes.

    TFLite builtin ops only, so an op the standalone interpreter cannot run (a
    TF "select"/Flex op) fails the conversion, not the user's phone.
    quantize: "none" (float32), "dynamic" (dynamic-range int8 weights) or
    "int8" (full integer, calibrated on `calibration`: raw 0..255 pixels,
    (N, size, size, 3), as the model takes them).

    Both sources give the same graph: measured for efficientnet_lite0 at 160 px
    (imagenet), the two .tflite files differ in one byte of conversion
    metadata (the source type) and give identical embeddings. A Keras model is
    traced into a temporary SavedModel by TF's converter (as Keras' own
    `model.export(format="litert")` does); the export stage passes the
    SavedModel it has written anyway, which saves that second trace (about
    9 s). extract caches the Keras model's bytes (backbone.tflite), so that
    path must keep giving the same bytes, or extract's store key must change.
    """
    import contextlib
    import io

    import tensorflow as tf

    if quantize not in ("none", "dynamic", "int8"):
        raise ValueError(f"quantize {quantize!r}: expected none, dynamic or int8")
    if isinstance(source, (str, Path)):
        converter = tf.lite.TFLiteConverter.from_saved_model(str(source))
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(source)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if quantize == "int8"
                                           else tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.experimental_enable_resource_variables = True  # as Keras sets it
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
        if calibration is None:
            raise ValueError("quantize='int8' needs calibration images")

        def representative():
            for image in calibration:
                yield [image[None].astype(np.float32)]

        converter.representative_dataset = representative
    with contextlib.redirect_stdout(io.StringIO()):  # "Saved artifact at '/tmp/...'": not for a user's stdout
        return converter.convert()
