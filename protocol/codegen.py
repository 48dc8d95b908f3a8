"""Regenerate the committed gRPC stubs from ``protocol/v1/*.proto`` (``python -m protocol.codegen``).

The stubs are committed so devices need no compiler; a test regenerates them into a
temporary folder and fails when they differ from the committed ones (drift).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = sorted((ROOT / "protocol" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` under ``out_dir``; return them."""
    from grpc_tools import protoc  # dev-only dependency (grpcio-tools)

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(ROOT)) for p in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed; see the message above")
    return sorted((out_dir / "protocol" / "v1").glob("*_pb2*.py*"))


def main() -> int:
    """Regenerate in place."""
    generated = generate(ROOT)
    print("\n".join(str(p.relative_to(ROOT)) for p in generated))
    return 0


if __name__ == "__main__":
    sys.exit(main())
