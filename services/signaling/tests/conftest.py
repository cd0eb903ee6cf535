"""A local OIDC provider for the identity tests: discovery and JWKS over real HTTP on 127.0.0.1,
RSA, EC and Ed25519 signing keys, and the tokens it would issue."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from orstream.signaling.jwks import VerificationKey

AUDIENCE = "orstream"
REALM_PATH = "/realms/or"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: Any

    @classmethod
    def generate(cls, alg: str, kid: str | None = None) -> SigningKey:
        private: Any
        if alg.startswith(("RS", "PS")):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(alg)
        return cls(kid or f"{alg.lower()}-{secrets.token_hex(4)}", alg, private)

    def jwk(self, *, declare_alg: bool = True) -> dict[str, Any]:
        jwk = VerificationKey.from_public_key(self.private.public_key(), self.kid).jwk
        return {**jwk, "alg": self.alg} if declare_alg else jwk


class Idp:
    """An OIDC provider on a real socket: ``serve(...)`` chooses the keys its JWKS carries."""

    def __init__(self) -> None:
        self.fetches: Counter[str] = Counter()
        self.failing = False
        self.jwks: dict[str, Any] = {"keys": []}
        self.discovery_issuer: str | None = None  # None: the real issuer
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                idp.fetches[self.path] += 1
                if idp.failing:
                    self.send_error(503, "down for maintenance")
                    return
                if self.path == REALM_PATH + "/.well-known/openid-configuration":
                    body: Any = {
                        "issuer": idp.discovery_issuer or idp.issuer,
                        "jwks_uri": idp.jwks_url,
                        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
                    }
                elif self.path == REALM_PATH + "/certs":
                    body = idp.jwks
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.issuer = self.base + REALM_PATH
        self.jwks_url = self.issuer + "/certs"
        self.running = True

    def serve(self, *keys: SigningKey | dict[str, Any]) -> None:
        self.jwks = {"keys": [k.jwk() if isinstance(k, SigningKey) else k for k in keys]}

    @property
    def jwks_fetches(self) -> int:
        return self.fetches[REALM_PATH + "/certs"]

    def token(self, key: SigningKey, **claims: Any) -> str:
        """A token as this provider issues it; a claim given as ``None`` is left out."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": secrets.token_hex(8),
            "role": "student",
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key.private, algorithm=key.alg, headers={"kid": key.kid})

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)


@pytest.fixture(scope="session")
def signing_keys() -> dict[str, SigningKey]:
    """One key per algorithm the edge accepts by default (RSA generation is slow: once)."""
    return {alg: SigningKey.generate(alg) for alg in ("RS256", "ES256", "EdDSA")}


@pytest.fixture
def idp(signing_keys: dict[str, SigningKey]) -> Iterator[Idp]:
    provider = Idp()
    provider.serve(*signing_keys.values())
    yield provider
    provider.stop()
