import shutil
import subprocess

import grpc
import pytest

from device.link import LinkConfig, channel
from protocol.config.server import TLSConfig
from protocol.messages import call_metadata
from protocol.v1 import cdca_pb2, cdca_pb2_grpc
from tests.system.conftest import TOKENS, start_server, tiny_world

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A throw-away CA, a server certificate for localhost and a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=cdca test CA",
        cwd=folder,
    )
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=folder,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            cwd=folder,
        )
    return folder


def register(target, pki, sha, client_cert=True):
    config = LinkConfig(
        target,
        "cam-a",
        TOKENS["cam-a"],
        sha,
        ca_cert=pki / "ca.crt",
        client_cert=pki / "client.crt" if client_cert else None,
        client_key=pki / "client.key" if client_cert else None,
    )
    with channel(config) as chan:
        stub = cdca_pb2_grpc.CloudAdaptationStub(chan)
        request = cdca_pb2.RegisterRequest(device_id="cam-a", protocol_version=1, model_sha256=sha)
        return stub.Register(request, metadata=call_metadata("cam-a", TOKENS["cam-a"]), timeout=5)


@pytest.mark.parametrize("mutual", [False, True])
def test_devices_reach_a_tls_server_and_plaintext_or_certless_clients_do_not(
    certificates, exported, distilled, tmp_path, mutual
):
    cloud_models = tiny_world(exported, distilled)
    tls = TLSConfig(
        certificates / "server.crt",
        certificates / "server.key",
        certificates / "ca.crt" if mutual else None,
    )
    address, shutdown = start_server(cloud_models, tmp_path / "state", host="localhost", tls=tls)
    sha = cloud_models.served.manifest.sha256
    target = address.replace("127.0.0.1", "localhost")
    try:
        assert register(target, certificates, sha).protocol_version == 1
        plain = cdca_pb2_grpc.CloudAdaptationStub(grpc.insecure_channel(target))
        with pytest.raises(grpc.RpcError) as caught:
            plain.Register(cdca_pb2.RegisterRequest(device_id="cam-a"), timeout=3)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        if mutual:
            with pytest.raises(grpc.RpcError) as caught:
                register(target, certificates, sha, client_cert=False)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        shutdown()
