"""A streaming GRU with its state as an input, for the tests and benchmarks of stateful models.

The model takes a chunk ``[1, T, 8]``, its state ``[2, 1, 16]`` (two GRU layers; the batch is
not on the first axis) and a 0-d gain, and gives features and the new state, as streaming audio
models exported by other tools do. Its sample data is made from real handwritten digits: each
digit's 8 rows are 8 time steps; the state is the one the model reaches on a digit's first half,
and the chunk is the second half. The arrays are in the ``[N, ...]`` layout that lists whole
inputs (``calib.npz``: ``x [N, 1, 4, 8]``, ``state [N, 2, 1, 16]``, ``gain [N]``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def stateful_gru():
    """The model (seeded weights), in eval mode."""
    import torch

    class Stateful(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = torch.nn.GRU(8, 16, num_layers=2, batch_first=True)
            self.head = torch.nn.Linear(16, 4)

        def forward(self, x, state, gain):
            y, h = self.gru(x * gain, state)
            return self.head(y), h

    torch.manual_seed(0)
    return Stateful().eval()


def write_stateful(folder: Path, samples: int = 200) -> tuple[Path, Path]:
    """``stateful.pt2`` (torch.export) and ``calib.npz`` (``samples`` real digits) in ``folder``."""
    import torch
    from sklearn.datasets import load_digits

    model = stateful_gru()
    rows = (load_digits().data / 16).astype(np.float32).reshape(-1, 8, 8)
    x, state, gain = [], [], []
    with torch.no_grad():
        for i in range(samples):
            g = np.float32(0.5 + (i % 5) * 0.25)
            _, h = model(torch.from_numpy(rows[i, None, :4]), torch.zeros(2, 1, 16), torch.tensor(g))
            x.append(rows[i, None, 4:])
            state.append(h.numpy())
            gain.append(g)
    x, state, gain = np.stack(x), np.stack(state), np.array(gain)
    np.savez(folder / "calib.npz", x=x, state=state, gain=gain)
    program = torch.export.export(model, (torch.from_numpy(x[0]), torch.from_numpy(state[0]), torch.tensor(gain[0])))
    torch.export.save(program, folder / "stateful.pt2")
    return folder / "stateful.pt2", folder / "calib.npz"
