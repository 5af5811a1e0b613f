"""The four host verbs share one shape: verb(model, config, *, data..., out, progress, **options), each config
checked the same way; exporters come from one (model kind, format) table."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import edgec
from edgec.converters import converter_for
from edgec.converters.exporters import ROUTES, reaches, route
from edgec.errors import ConversionError, ValidationError

PACKAGE = Path(edgec.__file__).resolve().parent
VERBS = {"convert": "ConvertConfig", "analyze": "AnalyzeConfig", "compress": "CompressConfig", "qat": "QATConfig"}


@pytest.mark.parametrize("verb, config", VERBS.items())
def test_every_verb_has_the_one_shape(verb, config):
    params = inspect.signature(getattr(edgec, verb)).parameters
    names = list(params)
    assert names[:2] == ["model", "config"], names
    assert params["config"].default is None
    assert names[-1] == "options" and params["options"].kind is inspect.Parameter.VAR_KEYWORD
    keyword_only = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert {"out", "progress", "eval_data"} <= set(keyword_only), keyword_only
    assert params["progress"].default is None
    assert getattr(edgec, config).__dataclass_params__.frozen


@pytest.mark.parametrize("config", VERBS.values())
def test_options_are_checked_the_same_way_for_every_config(config):
    cls = getattr(edgec, config)
    with pytest.raises(ValidationError, match=rf"unknown option\(s\) no_such_thing; {cls.__name__} takes "):
        cls().with_options({"no_such_thing": 1})
    assert cls().with_options({}) == cls()


def test_options_take_their_python_forms():
    cfg = edgec.ConvertConfig().with_options({"out": "build/x", "weights": "w.safetensors", "task": "classify",
                                               "input_shapes": ["1x8"]})
    assert cfg.out == Path("build/x") and cfg.weights == Path("w.safetensors")
    assert cfg.task.task == "classify" and cfg.input_shapes == ("1x8",)
    assert edgec.QATConfig().with_options({"formats": "onnx"}).formats == ("onnx",)
    assert edgec.CompressConfig().with_options({"skip": ["features.0"]}).skip == ("features.0",)


@pytest.mark.parametrize("config, options, message", [
    ("ConvertConfig", {"holdout": 1.5}, "holdout must be between 0 and 1"),
    ("AnalyzeConfig", {"format": "coreml"}, "unknown format 'coreml'"),
    ("AnalyzeConfig", {"holdout": 0}, "holdout must be between 0 and 1"),
    ("CompressConfig", {"steps": 0}, "steps must be at least 1"),
    ("QATConfig", {"formats": ("onnx", "coreml")}, "QAT formats must be onnx and/or tflite"),
    ("QATConfig", {"lr": -1.0}, "learning rate must be positive"),
])
def test_bad_values_are_refused_when_the_config_is_made(config, options, message):
    with pytest.raises(ValidationError, match=message):
        getattr(edgec, config)(**options)
    with pytest.raises(ValidationError, match=message):
        getattr(edgec, config)().with_options(options)


def test_the_exporter_table_says_which_kind_reaches_which_format():
    assert {("torch", "onnx"), ("torch", "tflite"), ("onnx", "onnx"), ("keras", "onnx"), ("keras", "tflite"),
            ("qat", "onnx"), ("qat", "tflite")} == set(ROUTES)
    assert reaches("keras", "tflite") and not reaches("onnx", "tflite")
    with pytest.raises(ConversionError, match="tflite export does not take an ONNX model: convert it to onnx"):
        route("onnx", "tflite")
    routed = converter_for("tflite", "keras")
    assert routed.format == "tflite" and routed.route.quantize  # TFLiteConverter's own quantizer first
    assert converter_for("onnx", "torch").layers == converter_for("onnx").layers  # the format's own reading


@pytest.mark.parametrize("module", ["converters/onnx.py", "converters/tflite.py"])
def test_a_format_module_never_asks_where_a_model_came_from(module):
    tree = ast.parse((PACKAGE / module).read_text())
    kinds = [node for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "kind"
             and isinstance(node.value, ast.Name) and node.value.id == "source"]
    assert not kinds, f"{module} branches on source.kind at line {kinds[0].lineno}"
    assert "export" not in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_every_verb_writes_its_report_through_the_one_writer():
    calls = {}
    for path in sorted((PACKAGE / "sdk").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "write_report":
                calls[path.relative_to(PACKAGE).as_posix()] = ast.unparse(node.args[1])
    assert calls == {"sdk/pipeline.py": "'report'", "sdk/analyze.py": "'sensitivity'",
                     "sdk/compress/job.py": "f'{out.stem}.report'", "sdk/quantize/aware.py": "'qat'"}


def test_progress_is_one_protocol_the_base_shows_nothing():
    progress = edgec.Progress()
    with progress.stage("anything"):
        progress.advance(1, 2, "layers")
        progress.note("a line")


def test_the_root_exports_every_verb_and_config_lazily():
    import subprocess
    import sys

    assert set(edgec.__all__) == {"__version__", "EdgecError", *edgec._LAZY}
    for name in edgec._LAZY:
        assert getattr(edgec, name) is not None
    # `import edgec` alone loads no framework: the verbs load theirs when called
    loaded = subprocess.run([sys.executable, "-c", "import sys, edgec; edgec.QATConfig; edgec.ConvertConfig; "
                             "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorflow') if m in sys.modules))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", loaded
