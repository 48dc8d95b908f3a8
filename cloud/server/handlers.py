"""Registering the servicer so that undecodable request bytes reach it instead of failing in gRPC.

The generated ``add_CloudAdaptationServicer_to_server`` deserialises with ``FromString``; bytes
that are not the message make grpcio end the call with UNKNOWN and log a traceback. Here a
request that does not parse becomes ``UNDECODABLE``, and the servicer answers it with
INVALID_ARGUMENT like any other malformed request (after authenticating the caller).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message  # type: ignore[import-untyped]

from protocol.messages import SERVICE_NAME
from protocol.v1 import cdca_pb2

UNDECODABLE: Any = object()  # what a request that does not parse arrives as


def _parse(message_type: type[Message]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except (DecodeError, ValueError, RuntimeError):
            return UNDECODABLE

    return parse


def add_service(servicer: Any, server: grpc.aio.Server) -> None:
    """``add_CloudAdaptationServicer_to_server`` with forgiving deserialisers."""
    kinds = {
        "Register": (grpc.unary_unary_rpc_method_handler, cdca_pb2.RegisterRequest),
        "Upload": (grpc.stream_unary_rpc_method_handler, cdca_pb2.UploadChunk),
        "WatchPrompts": (grpc.unary_stream_rpc_method_handler, cdca_pb2.PromptRequest),
        "GetPrompt": (grpc.unary_unary_rpc_method_handler, cdca_pb2.PromptRequest),
        "DownloadModel": (grpc.unary_stream_rpc_method_handler, cdca_pb2.ModelRequest),
    }
    handlers = {
        name: kind(
            getattr(servicer, name),
            request_deserializer=_parse(request),
            response_serializer=lambda message: message.SerializeToString(),
        )
        for name, (kind, request) in kinds.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
