"""Who is asking, and what may they do: bearer JWT → :class:`Identity` → decisions from the policy.

::

    Authorization: Bearer <jwt>
      → header: alg allowed (never ``none``, never ``HS*``), key by ``kid`` from the KeySource
      → signature, exp/nbf/iat (with leeway), iss, aud, sub        401 with a reason
      → not revoked (auth.revoke)                                  401
      → role (configurable claim) known to the policy              403
      → Identity: the policy's grant for the role, narrowed by an optional ``rooms`` claim

Every refusal carries a reason a person can act on, and happens before any SDP answer exists.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from orstream.common.policy import Policy, RoleGrant
from orstream.signaling.jwks import (
    RETRY_WITHOUT_KEYS_S,
    SUPPORTED_ALGORITHMS,
    KeySource,
    KeysUnavailable,
    UnknownKey,
)
from orstream.signaling.revocation import Revocations
from orstream.signaling.settings import DEFAULT_JWT_LEEWAY_S

#: A bearer token longer than this is not one (a header size attack, or a pasted file).
MAX_TOKEN_CHARS = 16 * 1024
REQUIRED_CLAIMS = ("exp", "iat", "sub", "iss", "aud")


class AccessDenied(Exception):
    """A refusal: ``status`` is 401 (who are you?), 403 (not for you), 429 (not so often) or
    503 (cannot tell now); ``retry_after`` (whole seconds, for ``Retry-After``) when waiting
    helps."""

    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = math.ceil(retry_after) if retry_after is not None else None


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller: the policy's grant for its role, narrowed by the token's rooms."""

    subject: str
    role: str
    #: Globs over ``site/room`` from the token; ``None``: the policy alone decides.
    rooms: tuple[str, ...] | None
    token_id: str
    issued_at: int
    expires_at: int
    grant: RoleGrant

    def may_watch(self, site: str, room: str, stream: str | None = None) -> bool:
        return self.grant.may_watch(site, room, stream) and self._token_allows(site, room)

    def require(self, site: str, room: str, stream: str | None = None) -> None:
        """Raise :class:`AccessDenied` (403) unless this identity may watch there."""
        where = f"{site}/{room}" + (f"/{stream}" if stream is not None else "")
        if not self.grant.may_watch(site, room, stream):
            why = "the policy does not grant it"
        elif not self._token_allows(site, room):
            why = f"the token is limited to rooms {', '.join(self.rooms or ())}"
        else:
            return
        who = f"role {self.role!r} of {self.subject!r}"
        raise AccessDenied(403, f"{who} may not watch {where}: {why}")

    @property
    def may_annotate(self) -> bool:
        return self.grant.annotate

    @property
    def may_chat(self) -> bool:
        return self.grant.chat

    @property
    def may_record(self) -> bool:
        return self.grant.record

    @property
    def metadata_view(self) -> str:
        """``identified``, ``technical`` or a de-identification profile (see the policy)."""
        return self.grant.metadata

    def _token_allows(self, site: str, room: str) -> bool:
        if self.rooms is None:
            return True
        return any(fnmatch.fnmatchcase(f"{site}/{room}", pattern) for pattern in self.rooms)


class TokenVerifier:
    """Verifies bearer tokens of one issuer and maps their role onto the policy."""

    def __init__(
        self,
        keys: KeySource,
        issuer: str,
        audience: str,
        algorithms: Sequence[str],
        policy: Policy,
        revocations: Revocations | None = None,
        role_claim: str = "role",
        rooms_claim: str = "rooms",
        leeway_s: float = DEFAULT_JWT_LEEWAY_S,
    ) -> None:
        if not algorithms:
            raise ValueError("at least one token algorithm must be allowed")
        for alg in algorithms:
            if alg.lower() == "none":
                raise ValueError("the 'none' algorithm is never accepted")
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(
                    f"algorithm {alg!r} cannot be allowed (asymmetric only: "
                    f"{', '.join(sorted(SUPPORTED_ALGORITHMS))})"
                )
        self.keys = keys
        self.policy = policy
        self.revocations = revocations
        self._issuer = issuer
        self._audience = audience
        self._algorithms = tuple(algorithms)
        self._role_claim = role_claim
        self._rooms_claim = rooms_claim
        self._leeway_s = leeway_s

    async def verify_header(self, authorization: str | None) -> Identity:
        if not authorization:
            raise AccessDenied(401, "missing Authorization: Bearer <token>")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AccessDenied(401, "Authorization must be 'Bearer <token>'")
        return await self.verify(token.strip())

    async def verify(self, token: str) -> Identity:
        claims = await self._verified_claims(token)
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AccessDenied(401, "token has an empty subject (sub)")
        token_id = claims.get("jti") or ""
        issued_at, expires_at = int(claims["iat"]), int(claims["exp"])
        if self.revocations is not None:
            refusal = self.revocations.refusal(subject, token_id, issued_at)
            if refusal is not None:
                raise AccessDenied(401, refusal)
        role, grant = self._role(claims)
        return Identity(
            subject=subject,
            role=role,
            rooms=self._rooms(claims),
            token_id=token_id,
            issued_at=issued_at,
            expires_at=expires_at,
            grant=grant,
        )

    async def _verified_claims(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_CHARS:
            raise AccessDenied(401, f"token longer than {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AccessDenied(401, f"token malformed: {exc}") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise AccessDenied(401, "token header names no algorithm (alg)")
        if alg.lower() == "none":
            raise AccessDenied(401, "unsigned token (alg: none) refused")
        if alg not in self._algorithms:
            raise AccessDenied(
                401, f"token algorithm {alg} not allowed (allowed: {', '.join(self._algorithms)})"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AccessDenied(401, "token header kid is not a string")
        try:
            key = await self.keys.find(kid)
        except UnknownKey as exc:
            raise AccessDenied(401, exc.reason) from exc
        except KeysUnavailable as exc:
            raise AccessDenied(503, exc.reason, RETRY_WITHOUT_KEYS_S) from exc
        bound = key.for_algorithm(alg)
        if bound is None:
            raise AccessDenied(401, f"token algorithm {alg} does not fit {key.describe()}")
        try:
            return jwt.decode(
                token,
                bound,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AccessDenied(401, "token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AccessDenied(401, "token not yet valid (nbf/iat in the future)") from exc
        except jwt.InvalidAudienceError as exc:
            raise AccessDenied(401, "token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise AccessDenied(401, "token is from an untrusted issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise AccessDenied(401, "token signature invalid") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AccessDenied(401, f"token lacks claim {exc.claim!r}") from exc
        except jwt.InvalidTokenError as exc:
            raise AccessDenied(401, f"token invalid: {exc}") from exc

    def _role(self, claims: dict[str, Any]) -> tuple[str, RoleGrant]:
        value = claim(claims, self._role_claim)
        if value is None:
            raise AccessDenied(401, f"token lacks claim {self._role_claim!r}")
        candidates = value if isinstance(value, list) else [value]
        for role in candidates:  # a provider's role list: the first one the policy knows
            if isinstance(role, str) and (grant := self.policy.grant(role)) is not None:
                return role, grant
        named = candidates[0] if len(candidates) == 1 else candidates
        raise AccessDenied(403, f"role {named!r} is not known to the policy")

    def _rooms(self, claims: dict[str, Any]) -> tuple[str, ...] | None:
        value = claim(claims, self._rooms_claim)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
            raise AccessDenied(401, f"claim {self._rooms_claim!r} must be a list of room globs")
        return tuple(value)


def claim(claims: dict[str, Any], name: str) -> Any:
    """The claim ``name``, or the dotted path ``a.b`` into nested objects; ``None`` if absent.

    A name that is itself a key wins (namespaced claims such as ``https://x.example/role``)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
