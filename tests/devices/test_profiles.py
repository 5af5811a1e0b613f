from __future__ import annotations

import pytest

from edgec.devices import DeviceProfile, builtin_profiles, get_profile
from edgec.errors import DeviceNotFoundError, ValidationError
from edgec.sdk.plan import resolve_target

REQUIRED = ("rpi4", "rpi5", "jetson-nano", "jetson-orin-nano", "coral-edgetpu", "x86-64")


def test_builtin_profiles_cover_the_required_boards():
    assert set(REQUIRED) <= set(builtin_profiles())


@pytest.mark.parametrize(
    ("alias", "name"),
    [("jetson", "jetson-orin-nano"), ("jetson-orin", "jetson-orin-nano"), ("rpi", "rpi4"),
     ("x86", "x86-64"), ("coral", "coral-edgetpu"), ("RPI5", "rpi5")],
)
def test_family_names_and_aliases_resolve(alias, name):
    assert get_profile(alias).name == name


def test_mistyped_device_suggests_the_nearest_names():
    with pytest.raises(DeviceNotFoundError, match="did you mean rpi4"):
        get_profile("rpi44")


@pytest.mark.parametrize(
    ("device", "fmt", "precision", "int8_io"),
    [("rpi4", "tflite", "int8", False), ("jetson-orin-nano", "onnx", "fp16", False),
     ("coral-edgetpu", "tflite", "int8", True), ("x86-64", "onnx", "int8", False)],
)
def test_profiles_carry_the_deployment_choices(device, fmt, precision, int8_io):
    profile = get_profile(device)
    assert (profile.format, profile.precision, profile.int8_io) == (fmt, precision, int8_io)
    assert resolve_target(profile, "auto", "auto")[:2] == (fmt, "auto")  # the budget search picks


def test_jetson_lists_tensorrt_before_cuda_before_cpu():
    providers = get_profile("jetson").execution_providers
    assert providers == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def test_coral_refuses_float_precisions():
    with pytest.raises(ValidationError, match="cannot run fp32"):
        resolve_target(get_profile("coral"), "auto", "fp32")


def test_user_profile_file_loads(tmp_path):
    text = get_profile("rpi4").source
    board = tmp_path / "my-board.toml"
    board.write_text(open(text).read().replace('name = "rpi4"', 'name = "my-board"').replace("threads = 4", "threads = 2"))
    profile = get_profile(board)
    assert (profile.name, profile.threads, profile.format) == ("my-board", 2, "tflite")


def test_profile_with_an_unknown_precision_is_rejected(tmp_path):
    board = tmp_path / "bad.toml"
    board.write_text(open(get_profile("rpi4").source).read().replace('precision = "int8"', 'precision = "int4"'))
    with pytest.raises(ValidationError, match="int4"):
        DeviceProfile.from_toml(board)


def test_profile_with_a_misspelled_field_names_it(tmp_path):
    board = tmp_path / "typo.toml"
    board.write_text(open(get_profile("rpi4").source).read().replace("threads = 4", "thraeds = 4"))
    with pytest.raises(ValidationError, match="thraeds.*did you mean threads"):
        DeviceProfile.from_toml(board)
