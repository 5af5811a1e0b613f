"""Bundles as tar chunks: unpacking on the Pythons boards have (Debian bookworm's 3.11.2 included)."""

from __future__ import annotations

import io
import tarfile

import pytest

from edgec.errors import BundleError
from edgec.runtime.bundle.archive import pack, unpack


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


def test_a_sparse_member_is_refused_before_it_inflates(tmp_path):
    """GNU tar stores a sparse file as its data runs; extracted, it would fill its full size."""
    import shutil
    import subprocess

    tar_bin = shutil.which("tar")
    if tar_bin is None:
        pytest.skip("no tar program to write a sparse archive with")
    (tmp_path / "src").mkdir()
    with open(tmp_path / "src" / "model.onnx", "wb") as fh:
        fh.truncate(64 * 2**20)  # 64 MiB of holes, a few hundred bytes in the archive
    (tmp_path / "src" / "manifest.json").write_text("{}")
    archive = tmp_path / "sparse.tar"
    subprocess.run([tar_bin, "--sparse", "--format=gnu", "-cf", str(archive), "-C", str(tmp_path / "src"),
                    "model.onnx", "manifest.json"], check=True)
    assert archive.stat().st_size < 2**20
    with pytest.raises(BundleError, match="not a plain file"):
        unpack(archive, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_files_adding_up_to_more_than_the_announced_size_are_refused(tmp_path, fixture_bundle):
    archive = tmp_path / "bundle.tar"
    pack(fixture_bundle("onnx", "int8"), archive)
    with pytest.raises(BundleError, match="more than the"):
        unpack(archive, tmp_path / "out", most_bytes=1024)
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("sha", ["../" * 21 + "x", "A" * 64, "0" * 63 + "/"])
def test_a_blob_digest_that_is_not_hex_never_becomes_a_file_name(sha):
    from edgec.runtime.agent.delivery import Blob

    with pytest.raises(BundleError, match="64 lowercase hex"):
        Blob.from_dict({"sha256": sha, "size": 10, "chunk_size": 10, "chunks": ["0" * 64]})
    with pytest.raises(BundleError, match="64 lowercase hex"):
        Blob.from_dict({"sha256": "0" * 64, "size": 10, "chunk_size": 10, "chunks": [sha]})


def test_downloads_keep_only_the_newest_resumable_blob(tmp_path):
    import os
    import time

    from edgec.runtime.agent.delivery import clean_downloads

    folder = tmp_path / ".downloads"
    folder.mkdir()
    old, new = "a" * 64, "b" * 64
    for sha, age in ((old, 100), (new, 0)):
        for suffix in (".part", ".json"):
            path = folder / f"{sha}{suffix}"
            path.write_text("{}")
            os.utime(path, (time.time() - age, time.time() - age))
    (folder / "junk.tmp").write_text("x")
    (folder / "stray").mkdir()
    clean_downloads(folder)
    assert sorted(p.name for p in folder.iterdir()) == [f"{new}.json", f"{new}.part"]
