"""Development secrets created on first start: written once, mode 0600, first writer wins.

Several processes of one stack start together and may all find the file missing; each writes
its own candidate to a private temporary file and links it into place, so exactly one wins and
every process reads the winner's secret.
"""

from __future__ import annotations

import os
from pathlib import Path


def create_once(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` (0600) unless it exists; a racing writer's copy wins."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
