"""`python -m servicekit.healthcheck [HOST:PORT] [--service NAME]`: exit 0 when SERVING.

For container HEALTHCHECKs and Kubernetes exec probes: asks the standard gRPC health service
(open without a token) of one server, over plaintext or TLS (`--ca`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", ca_file: str = "", timeout: float = 3.0) -> str:
    """The serving status name of `service` at `address` (raises grpc.RpcError)."""
    if ca_file:
        creds = grpc.ssl_channel_credentials(Path(ca_file).read_bytes())
        channel = grpc.secure_channel(address, creds)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="healthcheck", description=__doc__.splitlines()[0])
    p.add_argument("address", nargs="?", default="127.0.0.1:50051")
    p.add_argument("--service", default="", help="a service name; empty: the whole server")
    p.add_argument("--ca", default="", help="CA PEM of the server's TLS certificate")
    p.add_argument("--timeout", type=float, default=3.0)
    args = p.parse_args(argv)
    try:
        status = check(args.address, args.service, args.ca, args.timeout)
    except grpc.RpcError as err:
        print(f"healthcheck: {args.address}: {err.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
