"""The access log: one line per request, in the same format as the other logs (JSON or text).

Lines are buffered and written in batches (at most every ``FLUSH_INTERVAL`` seconds or when the
buffer passes ``FLUSH_BYTES``), as nginx's ``access_log ... buffer=`` does: the logging module's
per-record cost was the largest single item on the hot path. Lines go to the stream of the
logging handler (stderr, journald), so the access log and the other logs share one place.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import TextIO

from gatewayd.chain.api import RequestContext

FLUSH_INTERVAL = 0.2
_escape = json.encoder.encode_basestring_ascii


FLUSH_BYTES = 64 * 1024


class AccessLog:
    def __init__(self, fmt: str = "json", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream or sys.stderr
        self._buffer: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._prefix = ""

    def record(self, ctx: RequestContext, status: int, upstream: str | None) -> None:
        req = ctx.request
        now = time.time()
        second = int(now)
        if second != self._second:  # format the date once a second, not once a request
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        ms = int((now - second) * 1000)
        duration = (time.monotonic() - ctx.started) * 1000
        target = ctx.target
        # Who called (tenant and key id, never a credential): from JWT claims too, so escaped.
        principal = ctx.principal
        if principal is None:
            tenant = key_id = None
        else:
            tenant, key_id = principal.tenant, principal.key_id
        if self.fmt == "json":
            # Built by hand (each string escaped by the C encoder): a third of json.dumps' cost.
            # Request ids, client addresses, methods (HTTP tokens) and route names cannot hold
            # a quote or a backslash; the path and the config's upstream strings are escaped.
            line = (
                f'{{"time":"{self._prefix}.{ms:03d}Z","level":"INFO","logger":"gatewayd.access",'
                f'"message":"access","request_id":"{ctx.request_id}",'
                f'"client":"{req.client_ip}","method":"{req.method}","path":{_escape(req.path)},'
                f'"route":"{ctx.route.name}",'
                f'"upstream":{"null" if upstream is None else _escape(upstream)},'
                f'"target":{"null" if target is None else _escape(target)},'
                f'"tenant":{"null" if tenant is None else _escape(tenant)},'
                f'"key_id":{"null" if key_id is None else _escape(key_id)},'
                f'"status":{status},"bytes_in":{ctx.bytes_in},"bytes_out":{ctx.bytes_out},'
                f'"duration_ms":{duration:.3f}}}'
            )
        else:
            line = (
                f"{self._prefix}.{ms:03d}Z INFO gatewayd.access: access "
                f"request_id={ctx.request_id} client={req.client_ip} method={req.method} "
                f"path={_escape(req.path)} route={ctx.route.name} upstream={upstream} "
                f"target={target} "
                f"tenant={'-' if tenant is None else _escape(tenant)} "
                f"key_id={'-' if key_id is None else _escape(key_id)} "
                f"status={status} bytes_in={ctx.bytes_in} "
                f"bytes_out={ctx.bytes_out} duration_ms={duration:.3f}"
            )
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        data = "\n".join(self._buffer) + "\n"
        self._buffer.clear()
        self._size = 0
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            fd = -1
        try:
            if fd < 0:
                self.stream.write(data)
                self.stream.flush()
                return
            self.stream.flush()  # whatever the logging module wrote first goes first
            view = memoryview(data.encode())
            while view:  # straight to the descriptor: no text layer on the way
                view = view[os.write(fd, view) :]
        except (OSError, ValueError):
            pass  # a closed or broken log stream must never fail a request
