import pytest

from protocol.codegen import ROOT, generate


def test_committed_stubs_match_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    for fresh in generate(tmp_path):
        committed = ROOT / fresh.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} missing: run python -m protocol.codegen"
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.name} is stale: run python -m protocol.codegen and commit the result"
        )
