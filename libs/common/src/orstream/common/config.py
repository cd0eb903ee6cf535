"""Settings shared by every service, read from ``ORSTREAM_*`` environment variables.

Each service subclasses :class:`CommonSettings` in its own ``settings.py`` and adds only what it
alone needs, so one environment configures a whole stack.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orstream.common.subjects import TOKEN_PATTERN

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_HEALTH_HOST = "127.0.0.1"
DEFAULT_TRACE_SAMPLE_RATIO = 0.01
DEFAULT_JWT_ISSUER = "orstream-dev"
DEFAULT_JWT_AUDIENCE = "orstream"


def default_state_dir() -> Path:
    """Where a development stack keeps its local signing key (XDG state dir)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "orstream"


class CommonSettings(BaseSettings):
    """What every orstream process needs to know about its place in the deployment."""

    model_config = SettingsConfigDict(env_prefix="ORSTREAM_", extra="ignore")

    nats_url: str = DEFAULT_NATS_URL
    site: str = Field(default="site1", pattern=TOKEN_PATTERN)
    health_host: str = DEFAULT_HEALTH_HOST
    #: Port of the ``/livez`` ``/readyz`` ``/stats`` endpoint; 0 picks a free one.
    health_port: int = 0
    trace_sample_ratio: float = Field(default=DEFAULT_TRACE_SAMPLE_RATIO, ge=0.0, le=1.0)
    log_level: str = "INFO"
    state_dir: Path = Field(default_factory=default_state_dir)
    jwt_issuer: str = DEFAULT_JWT_ISSUER
    jwt_audience: str = DEFAULT_JWT_AUDIENCE
    #: The access policy (YAML); unset: the built-in defaults (``orstream/common/policy.yaml``).
    policy_file: Path | None = None
    #: Replicas of the JetStream ``AUDIT`` stream when a service creates it (3 in production).
    audit_replicas: int = Field(default=1, ge=1, le=5)
    #: Also send audit records to syslog: ``udp://host:514``, ``tcp://host:601`` or
    #: ``tls://host:6514`` (RFC 5426 / 6587 / 5425); empty: JetStream only.
    audit_syslog: str = ""

    @property
    def dev_key_path(self) -> Path:
        """The development signing key (PEM, EC P-256) shared by ``orstream token`` and the edge."""
        return self.state_dir / "dev-signing-key.pem"
