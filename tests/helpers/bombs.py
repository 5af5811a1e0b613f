"""Hostile request bodies for tests and benchmarks."""

from __future__ import annotations

import io
import zipfile


def npz_bomb(nbytes: int, level: int = 9) -> bytes:
    """An .npz of ~nbytes/1000 on the wire whose one float32 array inflates to ``nbytes`` of zeros."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        with archive.open("input.npy", "w", force_zip64=True) as member:
            header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, 1, 8, 8), }" % (nbytes // 256)
            header += " " * (-(10 + len(header) + 1) % 64) + "\n"
            member.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())
            zeros = bytes(2**22)
            for _ in range(nbytes // len(zeros)):
                member.write(zeros)
    return buf.getvalue()
