"""PEM files for TLS tests: a private CA, a server certificate and a client certificate."""

from __future__ import annotations

from pathlib import Path

import trustme


def write_pems(tmp: Path, server_names: tuple[str, ...], client_name: str) -> dict[str, Path]:
    """A new CA and two certificates it issued, written as `<name>.pem` in `tmp` (names: ca,
    server-cert, server-key, client-cert, client-key); returns their paths by name."""
    ca = trustme.CA()
    server = ca.issue_cert(*server_names)
    client = ca.issue_cert(client_name)
    data = {
        "ca": ca.cert_pem.bytes(),
        "server-cert": b"".join(p.bytes() for p in server.cert_chain_pems),
        "server-key": server.private_key_pem.bytes(),
        "client-cert": b"".join(p.bytes() for p in client.cert_chain_pems),
        "client-key": client.private_key_pem.bytes(),
    }
    out = {}
    for name, pem in data.items():
        out[name] = tmp / f"{name}.pem"
        out[name].write_bytes(pem)
    return out
