"""A small Docker token issuer for tests: the registry in front of it stays the real one.

Supports `GET realm?service=..&scope=..` (Basic credentials or none) and the OAuth2
`POST realm` form (grant_type=password / refresh_token). Each user has the set of actions it
may be granted; the issuer grants the intersection with what was asked, like real issuers.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry_testkit.ports import free_port


@dataclass(frozen=True)
class TokenUser:
    password: str
    actions: frozenset[str] = frozenset({"pull", "push"})


@dataclass
class TokenServer:
    """Issues JWTs the registry accepts (`auth.token` with `rootcertbundle`)."""

    workdir: Path
    users: dict[str, TokenUser] = field(default_factory=dict)
    service: str = "test-registry"
    issuer: str = "test-issuer"
    expires_in: int = 60
    anonymous_actions: frozenset[str] = frozenset()
    post_enabled: bool = True
    requests: Counter[str] = field(default_factory=Counter)
    scopes_asked: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        leaf = ca.issue_cert("token-signer")
        self.rootcertbundle = self.workdir / "token-root.pem"
        ca.cert_pem.write_to_path(str(self.rootcertbundle))
        key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError("trustme issued a non-EC key; ES256 needs an EC key")
        self._key = key
        cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        self._x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self.port = free_port()
        self._refresh: dict[str, str] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def start(self) -> TokenServer:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- issuing -------------------------------------------------------------------------

    def _granted(self, user: str | None, scopes: list[str]) -> list[dict[str, object]]:
        allowed = self.users[user].actions if user else self.anonymous_actions
        access: list[dict[str, object]] = []
        for scope in scopes:
            for one in scope.split(" "):
                # type:name:actions where name may hold host:port, so split the ends only.
                kind, _, rest = one.partition(":")
                name, _, actions = rest.rpartition(":")
                if not kind or not name:
                    continue
                granted = [a for a in actions.split(",") if a in allowed]
                access.append({"type": kind, "name": name, "actions": granted})
        return access

    def issue(self, user: str | None, scopes: list[str]) -> dict[str, object]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": self._granted(user, scopes),
        }
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": self._x5c})
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        }

    def check_basic(self, header: str | None) -> tuple[bool, str | None]:
        """(ok, user): ok is False for wrong credentials; user is None when anonymous."""
        if not header:
            return True, None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False, None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False, None
        return self.check_password(user, password), user

    def check_password(self, user: str, password: str) -> bool:
        known = self.users.get(user)
        return known is not None and secrets.compare_digest(known.password, password)

    def refresh_token_for(self, user: str) -> str:
        tok = secrets.token_urlsafe(16)
        self._refresh[tok] = user
        return tok

    def user_of_refresh_token(self, tok: str) -> str | None:
        return self._refresh.get(tok)


def _make_handler(ts: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output quiet; counts are in ts.requests

        def _answer(self, status: int, doc: dict[str, object]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            ts.requests["GET"] += 1
            url = urlsplit(self.path)
            if url.path != "/token":
                self._answer(404, {"error": "not found"})
                return
            params = parse_qs(url.query)
            ok, user = ts.check_basic(self.headers.get("Authorization"))
            if not ok:
                self._answer(401, {"error": "invalid credentials"})
                return
            scopes = params.get("scope", [])
            ts.scopes_asked.append(scopes)
            self._answer(200, ts.issue(user, scopes))

        def do_POST(self) -> None:
            ts.requests["POST"] += 1
            if not ts.post_enabled or urlsplit(self.path).path != "/token":
                self._answer(404, {"error": "not found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            grant = form.get("grant_type", [""])[0]
            if grant == "password":
                user = form.get("username", [""])[0]
                if not ts.check_password(user, form.get("password", [""])[0]):
                    self._answer(401, {"error": "invalid_grant"})
                    return
            elif grant == "refresh_token":
                found = ts.user_of_refresh_token(form.get("refresh_token", [""])[0])
                if found is None:
                    self._answer(401, {"error": "invalid_grant"})
                    return
                user = found
            else:
                self._answer(400, {"error": "unsupported_grant_type"})
                return
            scopes = [s for s in form.get("scope", [""])[0].split(" ") if s]
            ts.scopes_asked.append(scopes)
            doc = ts.issue(user, scopes)
            doc["refresh_token"] = ts.refresh_token_for(user)
            self._answer(200, doc)

    return Handler
