"""Generate runtime/serve/oip_pb2.py from runtime/serve/proto/oip.proto (grpcio-tools' protoc).

    .venv/bin/python scripts/grpc-codegen.py           # write it
    .venv/bin/python scripts/grpc-codegen.py --check   # exit 1 if the committed file differs

The messages are registered in a descriptor pool of edgec's own, not protobuf's default one:
tritonclient registers the same names (package ``inference``) from its own file, and both live in
one process when a program serves and calls (the tests do). Only the pool line differs from protoc's
output. Needs grpcio-tools (in the dev extra); the board needs only protobuf and grpcio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "runtime" / "serve" / "proto" / "oip.proto"
OUT = ROOT / "runtime" / "serve" / "oip_pb2.py"
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "POOL.AddSerializedFile("


def generate() -> str:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        status = protoc.main(["protoc", f"-I{PROTO.parent}", f"--python_out={tmp}", str(PROTO)])
        if status != 0:
            raise SystemExit(f"protoc failed ({status}) on {PROTO}")
        text = (Path(tmp) / "oip_pb2.py").read_text()
    if text.count(DEFAULT_POOL) != 1:
        raise SystemExit("protoc's output no longer registers its file in the default pool once: update this script")
    text = text.replace(DEFAULT_POOL, OWN_POOL)
    marker = "_sym_db = _symbol_database.Default()\n"
    return text.replace(marker, marker + "# edgec: its own pool (scripts/grpc-codegen.py); tritonclient registers the "
                        "same names in the default one\nPOOL = _descriptor_pool.DescriptorPool()\n", 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is not what protoc makes")
    args = parser.parse_args()
    text = generate()
    if args.check:
        same = OUT.exists() and OUT.read_text() == text
        print(f"{OUT.relative_to(ROOT)} {'matches' if same else 'differs from'} {PROTO.relative_to(ROOT)}")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
