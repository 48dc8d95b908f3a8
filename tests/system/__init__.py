"""Tests that run the cloud server and device clients over real gRPC on loopback."""
