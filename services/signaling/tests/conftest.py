"""The identity tests' OpenID provider and its keys are the root conftest's fixtures (``idp``,
``signing_keys``), shared with the browser sign-in of the integration tests."""

from __future__ import annotations

from orstream.common.config import DEFAULT_JWT_AUDIENCE

#: The audience the provider puts in its access tokens (``Idp.audience``).
AUDIENCE = DEFAULT_JWT_AUDIENCE
