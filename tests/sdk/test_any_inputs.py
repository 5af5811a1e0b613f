"""Models whose inputs are not a plain [batch, ...] tensor, through the CLI: dynamic height and width
that only some sizes fit."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from edgec.cli import app  # noqa: E402

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


class Valid(torch.nn.Module):
    """Two unpadded 3x3 convolutions and a concat with the centre of the input: 6x6 is the least it takes."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3), torch.nn.Conv2d(5, 2, 1)

    def forward(self, x):
        y = torch.relu(self.b(torch.relu(self.a(x))))
        return self.head(torch.cat([x[:, :, 2:-2, 2:-2], y], 1))


def test_a_model_with_dynamic_height_and_width_loads_and_runs_on_the_sizes_it_takes(tmp_path, digits):
    torch.manual_seed(0)
    x = digits.x_calib[:64]  # real 8x8 digits
    dim = torch.export.Dim
    program = torch.export.export(Valid().eval(), (torch.from_numpy(x[:2]),), dynamic_shapes={"x": {
        0: dim("batch", max=1024), 2: dim("h", min=6, max=256), 3: dim("w", min=6, max=256)}})
    torch.export.save(program, tmp_path / "valid.pt2")
    np.savez(tmp_path / "calib.npz", x=x)
    done = invoke("convert", tmp_path / "valid.pt2", "--device", "x86-64", "--precision", "fp32", "--calib",
                  tmp_path / "calib.npz", "--out", tmp_path / "b")
    assert done.exit_code == 0, done.output
    checked = invoke("verify", tmp_path / "b")  # the load check runs the golden inputs, not made-up 1x1 ones
    assert checked.exit_code == 0 and "✓ parity" in checked.output, checked.output
    np.savez(tmp_path / "big.npz", x=np.pad(x[:3], ((0, 0), (0, 0), (4, 4), (4, 4))))  # 16x16: another size it takes
    ran = invoke("run", tmp_path / "b", "--input", tmp_path / "big.npz")
    assert ran.exit_code == 0 and "float32[3, 2, 12, 12]" in ran.output, ran.output


@pytest.fixture(scope="module")
def stateful(tmp_path_factory):
    """A streaming GRU (state [2, 1, 16], batch not first; a 0-d gain) and 120 samples of real digits for it."""
    from edgec.sdk.examples.stateful import write_stateful

    root = tmp_path_factory.mktemp("stateful")
    write_stateful(root, samples=120)
    return root


def test_a_stateful_model_with_a_scalar_input_converts_verifies_and_runs_from_an_npz(stateful, tmp_path):
    done = invoke("convert", stateful / "stateful.pt2", "--device", "x86-64", "--calib", stateful / "calib.npz",
                  "--out", tmp_path / "b")  # the defaults: the precision search included
    assert done.exit_code == 0, done.output
    checked = invoke("verify", tmp_path / "b")
    assert checked.exit_code == 0 and "✓ parity" in checked.output, checked.output
    ran = invoke("run", tmp_path / "b", "--input", stateful / "calib.npz", "--output", tmp_path / "out.npz")
    assert ran.exit_code == 0 and "120 samples" in ran.output, ran.output
    with np.load(tmp_path / "out.npz") as out:
        assert out["output_0"].shape == (120, 1, 4, 4) and out["output_1"].shape == (120, 2, 1, 16)
        with np.load(stateful / "calib.npz") as data, torch.no_grad():  # sample 7, by the original
            program = torch.export.load(stateful / "stateful.pt2").module()
            _, state = program(torch.from_numpy(data["x"][7]), torch.from_numpy(data["state"][7]),
                               torch.tensor(data["gain"][7]))
            assert np.allclose(out["output_1"][7], state.numpy(), atol=1e-2)


@pytest.mark.parametrize(("arrays", "message"), [
    (lambda d: {**d, "state": d["state"][:, 0]}, "first axis is 2, not a batch (state: float32[2, 1, 16]): list "
                                                  "whole inputs along one more axis, [N, 2, 1, 16]"),
    (lambda d: {**d, "gain": np.float32(1.0)}, "different sample counts"),
    (lambda d: {**d, "gain": d["gain"][:, None, None]}, "gain has 3 dimensions [120, 1, 1], expected 0: gain: "
                                                        "float32[] (or 1, the first listing whole inputs)"),
])
def test_npz_layouts_a_model_cannot_take_are_one_line(stateful, tmp_path, arrays, message):
    with np.load(stateful / "calib.npz") as data:
        np.savez(tmp_path / "bad.npz", **arrays(dict(data)))
    done = invoke("convert", stateful / "stateful.pt2", "--device", "x86-64", "--precision", "fp32", "--calib",
                  tmp_path / "bad.npz", "--out", tmp_path / "b")
    assert done.exit_code == 1 and message in done.output, done.output
    assert "Traceback" not in done.output and not (tmp_path / "b").exists()


def test_a_program_saved_with_a_batch_of_one_teaches_and_converts(digits_model, digits, tmp_path):
    """``torch.export.export(model, (x[:1],))``, the plain way: a static batch of 1, run in chunks of it."""
    from safetensors.torch import save_file

    program = torch.export.export(digits_model.eval(), (torch.from_numpy(digits.x_calib[:1]),))
    torch.export.save(program, tmp_path / "static.pt2")
    save_file({k: v.contiguous() for k, v in digits_model.state_dict().items()}, str(tmp_path / "cnn.safetensors"))
    np.savez(tmp_path / "calib.npz", x=digits.x_calib, labels=digits.y_calib)
    np.savez(tmp_path / "eval.npz", x=digits.x_test, labels=digits.y_test)
    taught = invoke("compress", "edgec.sdk.examples.zoo:digits_cnn", "--weights", tmp_path / "cnn.safetensors",
                    "--data", tmp_path / "calib.npz", "--eval", tmp_path / "eval.npz", "--prune", "0.25", "--epochs",
                    "1", "--threads", "1", "--distill-from", tmp_path / "static.pt2", "--out", tmp_path / "small.pt2")
    assert taught.exit_code == 0, taught.output
    converted = invoke("convert", tmp_path / "static.pt2", "--device", "x86-64", "--precision", "fp32", "--calib",
                       tmp_path / "calib.npz", "--eval", tmp_path / "eval.npz", "--out", tmp_path / "b", "--json")
    assert converted.exit_code == 0, converted.output
