from __future__ import annotations

import numpy as np
import pytest

from edgec.errors import CalibrationError
from edgec.runtime.bundle.tensors import TensorSpec
from edgec.sdk.load.data import ImageOptions, load_samples

IMAGE = (TensorSpec("input", (None, 1, 8, 8), "float32"),)
TWO = (TensorSpec("ids", (None, 16), "int64"), TensorSpec("mask", (None, 16), "int64"))


def test_single_array_npz_feeds_a_single_input_model_whatever_its_key(tmp_path, digits):
    np.savez(tmp_path / "c.npz", pixels=digits.x_calib, labels=digits.y_calib)
    samples, warnings = load_samples(tmp_path / "c.npz", IMAGE)
    assert samples.arrays["input"].shape == digits.x_calib.shape
    np.testing.assert_array_equal(samples.labels, digits.y_calib)
    assert warnings == []


def test_multi_input_npz_must_be_keyed_by_input_name(tmp_path):
    np.savez(tmp_path / "c.npz", ids=np.zeros((40, 16), np.int64), attention=np.zeros((40, 16), np.int64))
    with pytest.raises(CalibrationError, match="no array for input mask.*it has ids, attention"):
        load_samples(tmp_path / "c.npz", TWO)


def test_wrong_shape_names_the_expected_shape(digits):
    with pytest.raises(CalibrationError, match=r"dimension 2 must be 8 for input: float32\[\?, 1, 8, 8\]"):
        load_samples({"input": digits.x_calib[:, :, :6, :]}, IMAGE)


def test_integer_images_for_a_float_model_are_refused_with_a_hint(digits):
    with pytest.raises(CalibrationError, match="uint8.*scale uint8 images to float"):
        load_samples({"input": (digits.x_calib * 255).astype(np.uint8)}, IMAGE)


def test_nan_is_refused(digits):
    x = digits.x_calib.copy()
    x[3, 0, 2, 2] = np.nan
    with pytest.raises(CalibrationError, match="NaN"):
        load_samples(x, IMAGE)


def test_zero_samples_is_an_error_and_few_samples_a_warning(digits):
    with pytest.raises(CalibrationError, match="has no samples"):
        load_samples({"input": digits.x_calib[:0]}, IMAGE)
    _, warnings = load_samples({"input": digits.x_calib[:10]}, IMAGE)
    assert len(warnings) == 1 and "only 10 samples" in warnings[0]


def test_pickled_npz_is_refused(tmp_path):
    np.savez(tmp_path / "evil.npz", input=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CalibrationError, match="object \\(pickled\\) arrays"):
        load_samples(tmp_path / "evil.npz", IMAGE)


def test_truncated_npz_is_refused(tmp_path, digits):
    np.savez(tmp_path / "c.npz", input=digits.x_calib)
    data = (tmp_path / "c.npz").read_bytes()
    (tmp_path / "c.npz").write_bytes(data[: len(data) // 3])
    with pytest.raises(CalibrationError, match="not a readable .npz"):
        load_samples(tmp_path / "c.npz", IMAGE)


def test_iterable_of_samples_with_a_transform(digits):
    items = ((img * 16).astype(np.uint8) for img in digits.x_calib[:50])
    samples, _ = load_samples(items, IMAGE, transform=lambda a: a.astype(np.float32) / 16)
    np.testing.assert_allclose(samples.arrays["input"], digits.x_calib[:50], atol=1e-6)


def test_image_folder_with_class_subfolders(tmp_path, digits):
    from PIL import Image

    for i in range(40):
        folder = tmp_path / "imgs" / str(int(digits.y_calib[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.x_calib[i, 0] * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    samples, _ = load_samples(tmp_path / "imgs", IMAGE, image=ImageOptions())
    assert samples.arrays["input"].shape == (40, 1, 8, 8)
    assert samples.arrays["input"].min() >= 0 and samples.arrays["input"].max() <= 1
    assert sorted(samples.labels.tolist()) == sorted(int(v) for v in digits.y_calib[:40])


def test_split_holds_out_samples_not_used_for_calibration():
    ids = np.arange(300, dtype=np.float32)[:, None]
    samples, _ = load_samples({"v": ids}, (TensorSpec("v", (None, 1), "float32"),))
    calib, held = samples.split(0.2, seed=3)
    calib_ids, held_ids = set(calib.arrays["v"][:, 0]), set(held.arrays["v"][:, 0])
    assert len(held_ids) == 60 and len(calib_ids) == 240
    assert not calib_ids & held_ids
    _, again = samples.split(0.2, seed=3)
    assert set(again.arrays["v"][:, 0]) == held_ids  # deterministic
