"""uvicorn's server for the app, which says where it serves only once it does."""

from __future__ import annotations

import logging
import socket

import uvicorn


class AnnouncingServer(uvicorn.Server):
    """uvicorn.Server that logs `line` when its start-up has finished: the app's start-up has run, the sockets
    accept requests, and Ctrl-C (SIGINT) and SIGTERM stop it. Logged before `run`, the line came while a signal
    could still be lost (SIGINT where the shell left it ignored, as for a background job) or the app fail to start.
    """

    def __init__(self, config: uvicorn.Config, line: str, log: logging.Logger) -> None:
        super().__init__(config)
        self._line = line
        self._log = log

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._log.info("%s", self._line)
