"""Fetch the model folder from the cloud (``DownloadModel``) and refuse it unless the hash matches."""

from __future__ import annotations

from pathlib import Path

import grpc

from protocol.errors import DataError
from protocol.files import atomic_write
from protocol.manifest import MANIFEST_FILE, manifest_from_json, verify_file
from protocol.messages import call_metadata
from protocol.v1 import cdca_pb2, cdca_pb2_grpc


def download_model(
    channel: grpc.Channel, device_id: str, token: str, folder: Path, timeout: float = 120.0
) -> Path:
    """Write the manifest and the files it names into ``folder``; returns the manifest path."""
    stub = cdca_pb2_grpc.CloudAdaptationStub(channel)  # type: ignore[no-untyped-call]
    chunks = stub.DownloadModel(
        cdca_pb2.ModelRequest(device_id=device_id),
        metadata=call_metadata(device_id, token),
        timeout=timeout,
    )
    manifest_text = ""
    files: dict[str, bytearray] = {}
    for chunk in chunks:
        if chunk.manifest_json:
            manifest_text = chunk.manifest_json
        if chunk.file_name:
            files.setdefault(chunk.file_name, bytearray()).extend(chunk.data)
    manifest = manifest_from_json(manifest_text, "downloaded manifest")
    expected = set(manifest.files)  # plain names: manifest_from_json refuses paths
    if set(files) != expected:
        raise DataError(
            f"the cloud sent files {sorted(files)}, the manifest names {sorted(expected)}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write(folder / name, bytes(data))
    for name, digest in manifest.digests.items():  # before the manifest makes them usable
        verify_file(folder / name, digest)
    path = folder / MANIFEST_FILE
    atomic_write(path, manifest_text.encode())
    return path
