"""Models as other tools write them, and real image data, for tests and benchmarks.

:func:`conv_model` builds an ONNX CNN with ``onnx.helper`` the way other frameworks' exporters
write them: opset 12, every weight a ``Constant`` node (no initializers), dynamic batch, height
and width; its weights are seeded random (what is measured with it is memory, time and fidelity
against itself, not accuracy). :func:`digits_images` is real handwritten digits (scikit-learn),
upscaled, three channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def conv_model(path: Path, *, channels: tuple[int, ...] = (16, 32, 32), in_channels: int = 3, classes: int = 10,
               opset: int = 12, seed: int = 0, downsample: tuple[int, ...] | None = None) -> Path:
    """A dynamic-shape CNN (N, C, H, W) -> (N, classes) with every weight a Constant node; the layers in
    ``downsample`` have stride 2 (default: every layer but the first)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, previous, width = [], "image", in_channels

    def const(name: str, value: np.ndarray) -> str:
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value.astype(np.float32), name)))
        return name

    for i, out_ch in enumerate(channels):
        w = const(f"w{i}", rng.normal(0, np.sqrt(2 / (width * 9)), (out_ch, width, 3, 3)))
        b = const(f"b{i}", rng.normal(0, 0.05, out_ch))
        nodes.append(helper.make_node("Conv", [previous, w, b], [f"conv{i}"], pads=[1, 1, 1, 1],
                                      strides=[2, 2] if (i in downsample if downsample is not None else i) else [1, 1],
                                      name=f"conv{i}"))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        previous, width = f"relu{i}", out_ch
    nodes.append(helper.make_node("GlobalAveragePool", [previous], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"))
    fc = const("fc_w", rng.normal(0, np.sqrt(1 / width), (width, classes)))
    fc_b = const("fc_b", rng.normal(0, 0.05, classes))
    nodes.append(helper.make_node("MatMul", ["flat", fc], ["logits_mm"], name="fc"))
    nodes.append(helper.make_node("Add", ["logits_mm", fc_b], ["logits"], name="fc_bias"))
    graph = helper.make_graph(
        nodes, "foreign_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", in_channels, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="another-exporter")
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def keras_model(path: Path, *, channels: tuple[int, ...] = (16, 32, 32), classes: int = 10, seed: int = 0) -> Path:
    """The same CNN as :func:`conv_model` in Keras: (N, H, W, 3) -> (N, classes), H and W dynamic."""
    import keras

    keras.utils.set_random_seed(seed)
    image = keras.Input((None, None, 3), name="image")
    h = image
    for i, out_ch in enumerate(channels):
        h = keras.layers.Conv2D(out_ch, 3, strides=2 if i else 1, padding="same", activation="relu")(h)
    logits = keras.layers.Dense(classes, name="logits")(keras.layers.GlobalAveragePooling2D()(h))
    keras.Model(image, logits).save(path)
    return path


def digits_images(size: int, count: int, *, seed: int = 0, offset: int = 0) -> np.ndarray:
    """``count`` real digits upscaled to ``size`` x ``size``, three channels, in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits().images[offset:offset + count].astype(np.float32) / 16.0
    repeat = max(1, size // 8)
    big = np.kron(digits, np.ones((repeat, repeat), dtype=np.float32))[:, :size, :size]
    return np.repeat(big[:, None], 3, axis=1).astype(np.float32)


def train_keras(x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int = 0):
    """A small Keras CNN trained on 8x8 digits (NHWC), the one benchmarks/keras_digits.py measures."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model
