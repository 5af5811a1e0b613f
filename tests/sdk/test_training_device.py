"""--train-device: compress and QAT train where the GPU is (auto takes CUDA when torch sees one), and the model
comes back to the CPU to be measured and exported. Where torch sees no GPU (CI), asking for one is refused at once;
where it sees one, the digits CNN is pruned, distilled and fake-quantized on it and checked like a CPU run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgec.errors import ValidationError  # noqa: E402
from edgec.sdk.training import check_device, train_device  # noqa: E402

EDGEC = Path(sys.executable).parent / "edgec"
CUDA = torch.cuda.is_available()


def test_auto_takes_cuda_only_where_torch_sees_it():
    assert train_device("auto").type == ("cuda" if CUDA else "cpu")
    assert train_device("cpu").type == "cpu"
    assert check_device("cuda:1") == "cuda:1"
    for wrong in ("gpu", "cuda:", "cuda:x", "mps"):
        with pytest.raises(ValidationError, match="is not one of auto, cpu, cuda"):
            check_device(wrong)


@pytest.mark.skipif(CUDA, reason="torch sees a GPU here: the training tests below run on it")
def test_asking_for_a_gpu_torch_does_not_see_fails_before_any_work(tmp_path, digits):
    np.savez(tmp_path / "train.npz", input=digits.x_train[:64], labels=digits.y_train[:64])
    done = subprocess.run([str(EDGEC), "compress", "edgec.sdk.examples.zoo:digits_cnn", "--data",
                           str(tmp_path / "train.npz"), "--out", str(tmp_path / "small.pt2"), "--train-device", "cuda"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "sees no CUDA device" in done.stderr and "--train-device cpu" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not list(tmp_path.glob("small*"))
    qat = subprocess.run([str(EDGEC), "qat", "edgec.sdk.examples.zoo:digits_cnn", "--data", str(tmp_path / "train.npz"),
                          "--out", str(tmp_path / "qat"), "--train-device", "cuda"], capture_output=True, text=True,
                         timeout=300)
    assert qat.returncode == 1 and len(qat.stderr.strip().splitlines()) == 1 and "sees no CUDA device" in qat.stderr
    assert not (tmp_path / "qat").exists()  # refused before the quantizer's (slow, talkative) imports


@pytest.mark.skipif(not CUDA, reason="needs a GPU torch sees (the CUDA build of torch): run on a GPU machine")
def test_compress_and_qat_train_on_the_gpu_and_export_the_same_graph(tmp_path, digits, digits_model):
    from safetensors.torch import save_file

    weights = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in digits_model.state_dict().items()}, str(weights))
    np.savez(tmp_path / "train.npz", input=digits.x_train, labels=digits.y_train)
    np.savez(tmp_path / "test.npz", input=digits.x_test, labels=digits.y_test)
    reports = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"small-{device}.pt2"
        done = subprocess.run([str(EDGEC), "compress", "edgec.sdk.examples.zoo:digits_cnn", "--weights", str(weights),
                               "--data", str(tmp_path / "train.npz"), "--eval", str(tmp_path / "test.npz"), "--prune",
                               "0.5", "--epochs", "2", "--distill-from", "edgec.sdk.examples.zoo:digits_cnn",
                               "--teacher-weights", str(weights), "--train-device", device, "--out", str(out)],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        reports[device] = json.loads(out.with_name(f"small-{device}.report.json").read_text())
    assert reports["cuda"]["trained_on"].startswith("cuda") and reports["cpu"]["trained_on"] == "cpu"
    cpu, gpu = reports["cpu"]["steps"][-1], reports["cuda"]["steps"][-1]
    assert (gpu["params"], gpu["macs"]) == (cpu["params"], cpu["macs"])  # the same pruned structure
    assert gpu["accuracy"] >= cpu["accuracy"] - 0.02  # trained as well (different kernels, not worse)
    qat = subprocess.run([str(EDGEC), "qat", "edgec.sdk.examples.zoo:digits_cnn", "--weights", str(weights), "--data",
                          str(tmp_path / "train.npz"), "--eval", str(tmp_path / "test.npz"), "--epochs", "1",
                          "--train-device", "cuda", "--out", str(tmp_path / "qat")],
                         capture_output=True, text=True, timeout=900)
    assert qat.returncode == 0, qat.stderr[-3000:]
    report = json.loads((tmp_path / "qat" / "qat.json").read_text())
    assert report["trained_on"].startswith("cuda") and report["accuracy"]["onnx"] >= 0.95
