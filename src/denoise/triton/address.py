"""Where a ``denoise`` Triton server listens by default: loopback, Triton's own ports.

Its own module, free of heavy imports, so the command line can show the defaults in its help
without loading the server code."""

from __future__ import annotations

HOST = "127.0.0.1"  # loopback only: a server is opened to a network on purpose, not by default
HTTP_PORT = 8000
GRPC_PORT = 8001
DEFAULT_URL = f"{HOST}:{HTTP_PORT}"  # what a client dials when given no --url
