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
