"""Running a model, or its exported files, through each runtime: one call shape for all of them.

A runner takes a batch of raw RGB pixels, (N, size, size, 3) uint8 or float32
0..255, and returns the model's output as float32 (N, D). The export stage's
parity gate runs every exported file through its own runtime this way;
`extract` and `predict` use LiteRT for speed on CPU (`runtime: litert`);
the served MLflow model runs the ONNX file.

TensorFlow is imported only by the runners that need it (Keras, SavedModel,
converting a model to LiteRT): onnxruntime and the LiteRT interpreter start
in a fraction of a second without it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]
RUNTIMES = ("auto", "tensorflow", "litert")


def threads() -> int:
    return os.cpu_count() or 1


def resolve(runtime: str, gpu: bool) -> str:
    """`auto`: LiteRT (XNNPACK) on CPU, where it runs the backbone about 1.8x faster; TensorFlow on a GPU."""
    if runtime == "auto":
        return "tensorflow" if gpu else "litert"
    return runtime


def keras_runner(model) -> Runner:
    """The Keras model itself, as one traced graph for any batch size."""
    import tensorflow as tf

    signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)]
    call = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32), input_signature=signature)
    return lambda x: call(np.asarray(x, np.float32)).numpy()


def saved_model_runner(path: str | Path) -> Runner:
    """A SavedModel's `serving_default` signature (input `image`)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # kept referenced by the closure: its variables live with it
    signature = loaded.signatures["serving_default"]
    output = next(iter(signature.structured_outputs))

    def run(x: np.ndarray) -> np.ndarray:
        return signature(image=tf.constant(np.asarray(x, np.float32)))[output].numpy()

    run.loaded = loaded  # type: ignore[attr-defined]
    return run


def litert_runner(model_file: str | Path | bytes, num_threads: int | None = None) -> Runner:
    """A .tflite model through the LiteRT interpreter (XNNPACK on CPU).

    The interpreter is resized when the batch size changes; it is not
    thread-safe, so calls are serialised.
    """
    from ai_edge_litert.interpreter import Interpreter

    kwargs = {"model_content": model_file} if isinstance(model_file, bytes) else {"model_path": str(model_file)}
    interpreter = Interpreter(num_threads=num_threads or threads(), **kwargs)
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    lock, shape = threading.Lock(), [None]

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=source["dtype"]) if source["dtype"] == np.float32 else _quantize(x, source)
        with lock:
            if shape[0] != x.shape:
                interpreter.resize_tensor_input(source["index"], x.shape)
                interpreter.allocate_tensors()
                shape[0] = x.shape
            interpreter.set_tensor(source["index"], x)
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
    return lambda x: session.run(None, {name: np.asarray(x, np.float32)})[0]


def to_litert(model) -> bytes:
    """Convert a Keras model to a float32 .tflite in memory, TFLite builtin ops only (no Flex ops)."""
    import contextlib
    import io

    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with contextlib.redirect_stdout(io.StringIO()):  # "Saved artifact at '/tmp/...'": not for a user's stdout
        return converter.convert()


def in_batches(run: Runner, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([run(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)])
