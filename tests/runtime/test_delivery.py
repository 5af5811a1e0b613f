"""Bundles as tar chunks: unpacking on the Pythons boards have (Debian bookworm's 3.11.2 included)."""

from __future__ import annotations

import io
import tarfile

import pytest

from edgec.errors import BundleError
from edgec.runtime.delivery import pack, unpack


def test_unpack_works_where_tarfile_has_no_extraction_filter(tmp_path, fixture_bundle, monkeypatch):
    archive = tmp_path / "bundle.tar"
    pack(fixture_bundle("onnx", "int8"), archive)

    def old_extractall(self, path=".", members=None, *, numeric_owner=False):  # 3.11.2's signature
        raise AssertionError("extractall is not needed")

    monkeypatch.setattr(tarfile.TarFile, "extractall", old_extractall)
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    unpack(archive, tmp_path / "out")
    original = fixture_bundle("onnx", "int8")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in original.iterdir())
    for p in original.iterdir():
        assert (tmp_path / "out" / p.name).read_bytes() == p.read_bytes()


@pytest.mark.parametrize("name,kind", [("../escape", tarfile.REGTYPE), ("sub/dir", tarfile.REGTYPE),
                                       ("link", tarfile.SYMTYPE)])
def test_unpack_refuses_anything_but_flat_plain_files(tmp_path, name, kind):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w:") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
        tar.addfile(info, None if kind == tarfile.SYMTYPE else io.BytesIO(b""))
    with pytest.raises(BundleError, match="not a plain file"):
        unpack(archive, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())
