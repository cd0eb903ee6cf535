"""The control pipe between the encoder supervisor and a stream's worker process.

JSON lines, a few per second at most (never per frame): the supervisor asks for stats, the
worker answers and reports a refusal. The worker's stdin and stdout carry it; the worker moves
its stdout aside first, so a library printing to stdout cannot corrupt it. stdin at end of file
means the supervisor is gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

#: Exit status of a worker that refuses its stream (an encoder that will not open, a format it
#: cannot encode): retrying at once would fail the same way.
EXIT_REFUSED = 78  # EX_CONFIG


class WorkerControl:
    """The worker's end: requests from stdin, replies to the saved stdout."""

    def __init__(self, out_fd: int) -> None:
        self._out_fd = out_fd

    @classmethod
    def from_stdio(cls) -> WorkerControl:
        out_fd = os.dup(sys.stdout.fileno())
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        return cls(out_fd)

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._out_fd, view) :]
            except BrokenPipeError:
                return  # the supervisor is gone; stdin's end of file stops us

    async def requests(self) -> asyncio.StreamReader:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        return reader
