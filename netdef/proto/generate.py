"""Regenerate ``netdef_pb2.py`` from ``proto/netdef.proto``.

Usage::

    python -m netdef.proto.generate            # writes netdef/proto/netdef_pb2.py
    python -m netdef.proto.generate OUT_DIR    # writes OUT_DIR/netdef_pb2.py

Needs ``grpcio-tools`` (a development-only dependency); the generated module
itself only needs ``protobuf`` at run time.
"""

from __future__ import annotations

import sys
from pathlib import Path

# netdef/proto/generate.py -> repository root is three levels up.
REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO_ROOT / "proto"
PROTO_FILE = PROTO_DIR / "netdef.proto"
DEFAULT_OUT_DIR = Path(__file__).resolve().parent
GENERATED_NAME = "netdef_pb2.py"


def generate(out_dir: str | Path = DEFAULT_OUT_DIR) -> Path:
    """Run protoc on ``proto/netdef.proto``; return the path of the written module."""
    from grpc_tools import protoc  # imported lazily: optional dependency

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        str(PROTO_FILE),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit status {rc}: {' '.join(args)}")
    return out_dir / GENERATED_NAME


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = generate(argv[0] if argv else DEFAULT_OUT_DIR)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
