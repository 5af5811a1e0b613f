from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgec.errors import ModelLoadError  # noqa: E402
from edgec.sdk.load.models import load_model  # noqa: E402


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rewrite(src, dst, replace):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, replace.get(item.filename, zin.read(item.filename)))


def test_pt2_loads_with_its_signature(assets):
    source = load_model(assets / "model.pt2")
    assert source.kind == "torch"
    assert [(t.name, t.shape, t.dtype) for t in source.inputs] == [("input", (None, 1, 8, 8), "float32")]
    assert [(t.name, t.shape) for t in source.outputs] == [("output", (None, 10))]


def test_hostile_pt2_sample_inputs_are_never_unpickled(assets, tmp_path):
    marker = tmp_path / "pwned"
    names = zipfile.ZipFile(assets / "model.pt2").namelist()
    target = next(n for n in names if n.endswith("sample_inputs/model.pt"))
    buffer = io.BytesIO()
    torch.save(_Payload(marker), buffer)
    _rewrite(assets / "model.pt2", tmp_path / "evil.pt2", {target: buffer.getvalue()})
    with pytest.raises(ModelLoadError, match="refuses to unpickle"):
        load_model(tmp_path / "evil.pt2")
    assert not marker.exists()


def test_hostile_pt2_pickled_weight_is_never_unpickled(assets, tmp_path):
    import json

    marker = tmp_path / "pwned"
    archive = zipfile.ZipFile(assets / "model.pt2")
    cfg_name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
    config = json.loads(archive.read(cfg_name))
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    weight = cfg_name.rsplit("/", 1)[0] + "/" + config["config"][first]["path_name"]
    _rewrite(assets / "model.pt2", tmp_path / "evil.pt2",
             {cfg_name: json.dumps(config).encode(), weight: pickle.dumps(_Payload(marker))})
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "evil.pt2")
    assert not marker.exists()


def test_pickle_checkpoints_are_refused_with_safe_alternatives(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ModelLoadError, match="torch.export.save.*safetensors"):
        load_model(path)


@pytest.mark.parametrize("name", ["model.pt2", "model.onnx"])
def test_truncated_files_are_model_load_errors(assets, tmp_path, name):
    data = (assets / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(tmp_path / name)


def test_text_file_is_not_a_model(tmp_path):
    (tmp_path / "notes.onnx").write_text("this is not a model")
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        load_model(tmp_path / "notes.onnx")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="cannot tell what kind of model"):
        load_model(tmp_path / "notes.txt")


def test_factory_with_safetensors_weights_reproduces_the_model(digits_model, digits, tmp_path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in digits_model.state_dict().items()}, tmp_path / "w.safetensors")
    source = load_model("edgec.sdk.examples.zoo:digits_cnn", weights=tmp_path / "w.safetensors",
                        example={"input": digits.x_calib[:1]})
    with torch.no_grad():
        expected = digits_model(torch.from_numpy(digits.x_test[:16])).numpy()
    np.testing.assert_allclose(source.run({"input": digits.x_test[:16]})[0], expected, atol=1e-5)
    assert source.inputs[0].shape == (None, 1, 8, 8)


def test_factory_weights_that_do_not_fit_are_named(tmp_path, digits):
    from safetensors.torch import save_file

    save_file({"bogus.weight": torch.zeros(3)}, tmp_path / "w.safetensors")
    with pytest.raises(ModelLoadError, match="missing 0.weight.*unexpected bogus.weight"):
        load_model("edgec.sdk.examples.zoo:digits_cnn", weights=tmp_path / "w.safetensors", example={"input": digits.x_calib[:1]})


def test_factory_that_does_not_exist(digits):
    with pytest.raises(ModelLoadError, match="has no attribute 'nope'"):
        load_model("edgec.sdk.examples.zoo:nope", example={"input": digits.x_calib[:1]})
    with pytest.raises(ModelLoadError, match="cannot import 'not_a_module_xyz'.*Run edgec from the folder holding "
                                             "not_a_module_xyz.py or not_a_module_xyz/, set PYTHONPATH"):
        load_model("not_a_module_xyz:build")


def test_a_factory_in_the_folder_edgec_runs_in_is_found_there(tmp_path, monkeypatch):
    """`edgec convert nets:build` from the folder holding nets.py, as `uvicorn main:app` finds main.py."""
    import sys

    (tmp_path / "edgec_doc_nets.py").write_text("import torch\n\ndef build():\n    return torch.nn.Linear(4, 2)\n")
    monkeypatch.chdir(tmp_path)
    source = load_model("edgec_doc_nets:build", example={"input": np.zeros((1, 4), np.float32)})
    assert [t.shape for t in source.outputs] == [(None, 2)]
    assert str(tmp_path) not in sys.path  # the folder was on the path only while importing


def test_a_pt2_holding_its_whole_example_dataset_is_flagged_with_the_cause(tmp_path):
    """torch.export.save keeps the example inputs: exporting with the dataset makes a file of the dataset's size."""
    import torch

    model = torch.nn.Linear(64, 2)
    torch.export.save(torch.export.export(model, (torch.randn(40_000, 64),)), str(tmp_path / "big.pt2"))
    warnings = load_model(tmp_path / "big.pt2").warnings
    assert len(warnings) == 1 and warnings[0].startswith("big.pt2 is 9.8 MB but its weights are 0.0 MB: its example "
                                                         "inputs ([40000, 64], 9.8 MB) are saved in it"), warnings
    torch.export.save(torch.export.export(model, (torch.randn(1, 64),)), str(tmp_path / "small.pt2"))
    assert load_model(tmp_path / "small.pt2").warnings == []
