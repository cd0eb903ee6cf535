"""Where the keys that sign bearer tokens come from: the development key, or the OIDC provider.

::

    KeySource.find(kid) -> VerificationKey      .for_algorithm(alg) -> PyJWK | None
      ├── StaticKeys   fixed public keys (the development key from ``orstream token``)
      └── JwksKeys     the provider's JWKS over HTTP: cached for ``cache_s``, fetched again on an
                       unknown ``kid`` (key rotation) at most once per ``min_refresh_s`` (forged
                       kids must not hammer the provider), the cached set kept when a fetch fails

A key only ever verifies the algorithms its type allows (RSA: ``RS*``/``PS*``, EC: the ``ES*``
of its curve, OKP Ed25519: ``EdDSA``), and only its declared ``alg`` when it declares one; an
``oct`` (shared secret) key is never loaded, so no public key can become an HMAC secret.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt import PyJWK
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWTError

from orstream.common.telemetry import Counters
from orstream.common.tokens import DEV_KEY_ID, load_or_create_signing_key
from orstream.signaling.settings import (
    DEFAULT_JWKS_CACHE_S,
    DEFAULT_JWKS_MIN_REFRESH_S,
    SignalingSettings,
)

log = logging.getLogger(__name__)

#: Token algorithms this edge can verify → the key type (and curve) each needs. Symmetric
#: ``HS*`` and ``none`` are absent on purpose: a verifier holding only public keys must never
#: accept them.
KEY_TYPE_FOR_ALGORITHM: Mapping[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", "Ed25519"),
}
SUPPORTED_ALGORITHMS = frozenset(KEY_TYPE_FOR_ALGORITHM)
DEFAULT_FETCH_TIMEOUT_S = 5.0
#: A JWKS or discovery document larger than this is not one.
MAX_DOCUMENT_BYTES = 512 * 1024
DISCOVERY_PATH = "/.well-known/openid-configuration"
#: While no key set was ever fetched, retry this often (no token can be verified meanwhile).
RETRY_WITHOUT_KEYS_S = 2.0

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class KeyLookupError(Exception):
    """No key to verify a token with; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownKey(KeyLookupError):
    """The token names a key the issuer does not have (or no key, among several)."""


class KeysUnavailable(KeyLookupError):
    """The provider's keys were never fetched: no token can be verified yet (not its fault)."""


@dataclass(slots=True)
class VerificationKey:
    """One public key of a key set, as its JWK says."""

    jwk: dict[str, Any]
    _by_algorithm: dict[str, PyJWK] = field(default_factory=dict, repr=False)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> VerificationKey:
        """Parse one JWK; ``ValueError`` if it is not a usable public signature key."""
        data = dict(jwk)
        if data.get("kty") == "oct":
            raise ValueError("symmetric (oct) keys are never used")
        if data.get("use", "sig") != "sig":
            raise ValueError(f"key is for {data.get('use')!r}, not signatures")
        if any(member in data for member in ("d", "p", "q")):
            raise ValueError("a private key has no place in a JWKS")
        try:
            default = PyJWK(data)
        except PyJWTError as exc:
            raise ValueError(str(exc)) from exc
        key = cls(data)
        key._by_algorithm[default.algorithm_name] = default
        return key

    @classmethod
    def from_public_key(cls, public_key: PublicKey, kid: str) -> VerificationKey:
        jwk: dict[str, Any]
        if isinstance(public_key, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
        return cls.from_jwk({**jwk, "kid": kid, "use": "sig"})

    @property
    def kid(self) -> str | None:
        kid = self.jwk.get("kid")
        return kid if isinstance(kid, str) else None

    def describe(self) -> str:
        kind = " ".join(str(self.jwk[m]) for m in ("kty", "crv") if m in self.jwk)
        return f"key {self.kid!r} ({kind})"

    def for_algorithm(self, alg: str) -> PyJWK | None:
        """This key bound to ``alg``, or ``None`` if its type (or declared alg) forbids it."""
        declared = self.jwk.get("alg")
        if declared is not None and declared != alg:
            return None
        kty, crv = KEY_TYPE_FOR_ALGORITHM.get(alg, (None, None))
        if kty is None or self.jwk.get("kty") != kty or (crv and self.jwk.get("crv") != crv):
            return None
        bound = self._by_algorithm.get(alg)
        if bound is None:  # e.g. PS256 with an RSA key that declares no alg
            try:
                bound = self._by_algorithm[alg] = PyJWK(self.jwk, algorithm=alg)
            except PyJWTError:
                return None
        return bound


def parse_jwks(document: Any) -> dict[str | None, VerificationKey]:
    """The usable signature keys of a JWKS document, by ``kid``; ``ValueError`` if none."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS: expected an object with a 'keys' list")
    keys: dict[str | None, VerificationKey] = {}
    for i, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict):
            continue
        try:
            key = VerificationKey.from_jwk(jwk)
        except ValueError as exc:
            log.debug("JWKS key %d (%s) skipped: %s", i, jwk.get("kid"), exc)
            continue
        if key.kid in keys:
            log.warning("JWKS names kid %r twice; the first is kept", key.kid)
            continue
        keys[key.kid] = key
    if not keys:
        raise ValueError("the JWKS has no usable signature key")
    return keys


def pick(keys: Mapping[str | None, VerificationKey], kid: str | None) -> VerificationKey | None:
    """The key named ``kid``; a token without ``kid`` may use the only key of a one-key set."""
    if kid is None and len(keys) == 1:
        return next(iter(keys.values()))
    return keys.get(kid)


class KeySource(Protocol):
    """Public keys by ``kid``: the one thing a token verifier needs from an issuer."""

    async def find(self, kid: str | None) -> VerificationKey:
        """The key named ``kid``; :class:`UnknownKey` or :class:`KeysUnavailable` if none."""
        ...

    async def refresh(self) -> bool:
        """Fetch the keys now if they are fetched at all; ``True`` if the set is usable."""
        ...

    async def aclose(self) -> None: ...


class StaticKeys:
    """Fixed public keys: the development key, or keys handed in by a test."""

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self._keys = {key.kid: key for key in keys}

    @classmethod
    def development(cls, key_path: Path) -> StaticKeys:
        """The public half of the key ``orstream token`` signs with (created if missing)."""
        private = load_or_create_signing_key(key_path)
        return cls([VerificationKey.from_public_key(private.public_key(), DEV_KEY_ID)])

    async def find(self, kid: str | None) -> VerificationKey:
        key = pick(self._keys, kid)
        if key is None:
            raise UnknownKey(f"token names key {kid!r}, which this issuer does not have")
        return key

    async def refresh(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


class JwksKeys:
    """The OIDC provider's JWKS, from ``jwks_url`` or found by discovery from ``issuer``."""

    def __init__(
        self,
        *,
        jwks_url: str = "",
        issuer: str = "",
        cache_s: float = DEFAULT_JWKS_CACHE_S,
        min_refresh_s: float = DEFAULT_JWKS_MIN_REFRESH_S,
        timeout_s: float = DEFAULT_FETCH_TIMEOUT_S,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not jwks_url and not issuer:
            raise ValueError("JwksKeys needs a jwks_url, or an issuer for OIDC discovery")
        for url in (jwks_url, issuer):
            if url:
                _check_url(url)
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._discovered_url = ""
        self._cache_s = cache_s
        self._min_refresh_s = min_refresh_s
        self._clock = clock
        self.counters = counters or Counters("orstream.edge")
        self._http = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._keys: dict[str | None, VerificationKey] | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._last_error = "not fetched yet"
        self._lock = asyncio.Lock()

    async def find(self, kid: str | None) -> VerificationKey:
        if self._keys is None or self._clock() - self._fetched_at >= self._cache_s:
            await self.refresh()
        key = pick(self._keys, kid) if self._keys is not None else None
        if key is None and self._keys is not None:
            await self.refresh()  # perhaps a rotation; throttled, so a forged kid costs nothing
            key = pick(self._keys, kid)
        if key is not None:
            return key
        if self._keys is None:
            raise KeysUnavailable(f"no keys from the identity provider yet: {self._last_error}")
        if kid is None:
            raise UnknownKey("token names no key (kid) and the issuer has several")
        raise UnknownKey(f"token names key {kid!r}, which the identity provider does not have")

    async def refresh(self) -> bool:
        """Fetch the key set unless one was tried within ``min_refresh_s``; keep it on failure."""
        async with self._lock:
            now = self._clock()
            interval = self._min_refresh_s
            if self._keys is None:
                interval = min(interval, RETRY_WITHOUT_KEYS_S)
            if self._attempted_at is not None and now - self._attempted_at < interval:
                self.counters.add("jwks_refresh_throttled")
                return self._keys is not None
            self._attempted_at = now
            try:
                keys = parse_jwks(await self._get_json(await self._jwks_uri()))
            except (httpx.HTTPError, ValueError) as exc:
                self._discovered_url = ""  # the provider may have moved its JWKS
                self._last_error = f"{type(exc).__name__}: {exc}"
                self.counters.add("jwks_refresh_failures")
                log.warning(
                    "JWKS fetch failed (%s); %s",
                    self._last_error,
                    "keeping the cached keys" if self._keys is not None else "no keys yet",
                )
                return self._keys is not None
            if self._keys is None or keys.keys() != self._keys.keys():
                log.info("JWKS: keys %s", ", ".join(repr(k) for k in keys))
            self._keys, self._fetched_at = keys, self._clock()
            self.counters.add("jwks_refreshes")
            return True

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _jwks_uri(self) -> str:
        if self._jwks_url:
            return self._jwks_url
        if not self._discovered_url:
            document = await self._get_json(self._issuer.rstrip("/") + DISCOVERY_PATH)
            if not isinstance(document, dict):
                raise ValueError("the discovery document is not a JSON object")
            # OIDC Discovery 1.0 §4.3: the document must name the issuer it was asked for.
            if document.get("issuer") != self._issuer:
                raise ValueError(
                    f"discovery names issuer {document.get('issuer')!r}, not {self._issuer!r}"
                )
            uri = document.get("jwks_uri")
            if not isinstance(uri, str):
                raise ValueError("the discovery document has no jwks_uri")
            _check_url(uri)
            self._discovered_url = uri
        return self._discovered_url

    async def _get_json(self, url: str) -> Any:
        async with self._http.stream("GET", url, headers={"Accept": "application/json"}) as r:
            r.raise_for_status()
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError(f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{url} did not send JSON: {exc}") from exc


def _check_url(url: str) -> None:
    """Keys fetched in clear text could be swapped on the way: plain http only to loopback."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    try:
        loopback = parts.hostname == "localhost" or ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        log.warning("fetching signing keys over plain http from %s: use https", parts.hostname)


def key_source(settings: SignalingSettings, counters: Counters | None = None) -> KeySource:
    """The provider's JWKS when one is configured, else the development key."""
    if settings.jwks_url or settings.oidc_discovery:
        return JwksKeys(
            jwks_url=settings.jwks_url,
            issuer="" if settings.jwks_url else settings.jwt_issuer,
            cache_s=settings.jwks_cache_s,
            min_refresh_s=settings.jwks_min_refresh_s,
            counters=counters,
        )
    return StaticKeys.development(settings.dev_key_path)
