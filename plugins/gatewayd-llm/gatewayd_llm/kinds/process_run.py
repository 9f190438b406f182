"""One run of a command-line model for the ``process`` kind: the child process and its group
from the spawn until they are gone, and its stdout as a streamed OpenAI answer.

A run owns the child's pipes: a task writes the prompt to stdin and closes it, a task keeps
the tail of stderr (for the log), and stdout is read by the answer, one read at a time under a
lock (when the answer is abandoned, a discarding reader takes the lock so that a full pipe
cannot hold the child's exit). Its deadline (``timeout``) is a timer: it holds even when nobody
reads the answer. :meth:`ProcessRun.close` ends it exactly once: the group is killed (SIGKILL,
or SIGTERM and SIGKILL after ``kill_grace``), reaped, what it left behind in the group is
killed, and ``on_done`` frees the slot.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from gatewayd_llm import tokens
from gatewayd_llm.exchange import Exchange, StreamFailed
from gatewayd_llm.kinds.masking import mask
from gatewayd_llm.kinds.translate import ChunkWriter
from gatewayd_llm.wire import DONE

__all__ = ["Expired", "ProcessRun", "ProcessStream", "RunSettings"]

READ_SIZE = 4096  # one read of stdout, at most
STDERR_KEPT = 2048  # the tail of stderr kept for the log
PIPES_GRACE = 2.0  # after SIGKILL, how long the pipes may take to close

Expiry = Literal["stall", "timeout"]


class Expired(Exception):
    """No output within the read deadline (``stall``) or past the run's (``timeout``): the
    group is being killed."""

    def __init__(self, why: Expiry) -> None:
        super().__init__(why)
        self.why: Expiry = why


@dataclass(frozen=True, slots=True)
class RunSettings:
    timeout: float  # the whole run
    read_timeout: float  # the longest silence on stdout
    kill_grace: float  # between SIGTERM and SIGKILL
    max_output_bytes: int


class ProcessRun:
    """One child process and its group (``start_new_session``: the child leads it)."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        prompt: bytes,
        settings: RunSettings,
        *,
        on_done: Callable[[ProcessRun], None],
        logger: logging.Logger,
        log_extra: dict[str, str],
        secrets: Sequence[str],
    ) -> None:
        self.proc = proc
        self.pgid = proc.pid
        self.settings = settings
        self.on_done = on_done
        self.logger = logger
        self.log_extra = log_extra
        self.secrets = secrets
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + settings.timeout
        self.output = 0  # stdout bytes read
        self.truncated = False  # max_output_bytes reached (and the group killed)
        self.expired: Expiry | None = None
        self.stderr = bytearray()
        self.closing: asyncio.Task[None] | None = None
        self.stdout_lock = asyncio.Lock()
        self.feeder = loop.create_task(self._feed(prompt))
        self.drainer = loop.create_task(self._drain_stderr())
        self.timer = loop.call_later(settings.timeout, self._expire)

    # -- the pipes -------------------------------------------------------------------------------

    async def _feed(self, prompt: bytes) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(prompt)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it exited without reading it all: its exit status tells
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                stdin.close()

    async def _drain_stderr(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        with contextlib.suppress(OSError, ValueError):
            while data := await stderr.read(65536):
                self.stderr += data
                if len(self.stderr) > STDERR_KEPT:
                    del self.stderr[: len(self.stderr) - STDERR_KEPT]

    async def read(self) -> bytes:
        """The next piece of stdout (b"" at its end), within the read deadline and the run's;
        :class:`Expired` when either passes. Past ``max_output_bytes`` it is cut there,
        ``truncated`` is set and the group killed."""
        stdout = self.proc.stdout
        assert stdout is not None
        if self.expired is not None:
            raise Expired(self.expired)
        remaining = self.deadline - asyncio.get_running_loop().time()
        wait = min(self.settings.read_timeout, remaining)
        try:
            async with asyncio.timeout(max(wait, 0.0)), self.stdout_lock:
                data = await stdout.read(READ_SIZE)
        except TimeoutError:
            self.expired = self.expired or ("stall" if wait < remaining else "timeout")
            self.close(graceful=True)
            raise Expired(self.expired) from None
        if self.expired is not None:  # the timer fired: what came is not the answer's end
            raise Expired(self.expired)
        limit = self.settings.max_output_bytes
        if self.output + len(data) > limit:
            data = data[: limit - self.output]
            self.truncated = True
            self.close()
        self.output += len(data)
        return data

    async def exit_status(self) -> int:
        """The exit status, once stdout ended (within the run's deadline)."""
        remaining = self.deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                status = await self.proc.wait()
        except TimeoutError:
            self.expired = self.expired or "timeout"
            self.close(graceful=True)
            raise Expired(self.expired) from None
        if self.expired is not None:
            raise Expired(self.expired)
        return status

    # -- the end ---------------------------------------------------------------------------------

    def _expire(self) -> None:
        if self.closing is None:
            self.expired = self.expired or "timeout"
            self.close(graceful=True)

    def killpg(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def close(self, graceful: bool = False) -> asyncio.Task[None]:
        """End the run (idempotent): kill the group now with SIGKILL or, ``graceful``, with
        SIGTERM and SIGKILL after ``kill_grace``; the returned task reaps it."""
        if self.closing is None:
            self.timer.cancel()
            if self.proc.returncode is None:
                self.killpg(signal.SIGTERM if graceful else signal.SIGKILL)
            self.closing = asyncio.get_running_loop().create_task(self._reap(graceful))
        return self.closing

    async def _reap(self, graceful: bool) -> None:
        discard = asyncio.get_running_loop().create_task(self._discard_stdout())
        self.feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await self.feeder
        if self.proc.stdin is not None:  # the feeder may never have run
            with contextlib.suppress(OSError, RuntimeError):
                self.proc.stdin.close()
        try:
            if graceful:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.kill_grace):
                        await self.proc.wait()
            # What is left of the group: the child after its grace, or what it left behind
            # when it exited on its own.
            self.killpg(signal.SIGKILL)
            try:
                async with asyncio.timeout(PIPES_GRACE):
                    await self.proc.wait()  # exited, and its pipes closed
                    await self.drainer
            except TimeoutError:
                self.logger.warning(
                    "model process: its pipes are still open (a process outside its group?)",
                    extra=self.log_extra,
                )
        finally:
            discard.cancel()
            self.drainer.cancel()
            self.on_done(self)

    async def _discard_stdout(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        with contextlib.suppress(OSError, ValueError):
            async with self.stdout_lock:
                while await stdout.read(65536):
                    pass

    def log_failure(self, status: int) -> None:
        """The exit status and a masked excerpt of stderr, at WARNING (never to the client)."""
        sig = None
        if status < 0:
            with contextlib.suppress(ValueError):
                sig = signal.Signals(-status).name
        excerpt = mask(self.stderr.decode("utf-8", "replace").strip(), self.secrets)
        self.logger.warning(
            "model process failed",
            extra={
                **self.log_extra,
                "exit_status": status,
                "signal": sig,
                "stderr": excerpt[-STDERR_KEPT:],
            },
        )


class ProcessStream:
    """A streamed answer: each read of stdout as an OpenAI chunk, as it arrives (UTF-8 decoded
    incrementally: a character split across reads waits for its last byte). Closing it
    (``aclose()``) or cancelling its reader kills the process group at once."""

    __slots__ = ("decoder", "done", "exchange", "pending", "prompt_tokens", "run", "text", "writer")

    def __init__(
        self, run: ProcessRun, exchange: Exchange, writer: ChunkWriter, prompt_tokens: int
    ) -> None:
        self.run = run
        self.exchange = exchange
        self.writer = writer
        self.prompt_tokens = prompt_tokens
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.pending: list[bytes] = []
        self.text: list[str] = []
        self.done = False

    def __aiter__(self) -> ProcessStream:
        return self

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self.decoder.decode(data, final)
        if text:
            self.exchange.mark_first_byte()
            self.text.append(text)
            self.pending.extend(self.writer.text(text))

    async def __anext__(self) -> bytes:
        try:
            while not self.pending:
                if self.done:
                    raise StopAsyncIteration
                data = await self.run.read()
                self.feed(data)
                if not data or self.run.truncated:
                    await self.end()
        except Expired as exc:
            await self.aclose()
            if exc.why == "timeout":
                raise StreamFailed("stall", "the model process ran past its timeout", 504) from None
            raise StreamFailed("stall", "the model process stopped sending", 504) from None
        except BaseException:
            await self.aclose()
            raise
        chunk = b"".join(self.pending)
        self.pending.clear()
        return chunk

    async def end(self) -> None:
        """stdout ended (or was cut): the last chunks, or :class:`StreamFailed` ``provider``
        when the process failed."""
        self.feed(b"", final=True)
        if self.run.truncated:
            reason = "length"
        else:
            status = await self.run.exit_status()
            if status != 0:
                self.run.log_failure(status)
                self.run.close()
                raise StreamFailed("provider", "the model process failed")
            reason = "stop"
        self.run.close()
        completion = tokens.text_tokens("".join(self.text))
        self.pending.extend(self.writer.finish(reason))
        self.pending.append(self.writer.usage(self.prompt_tokens, completion))
        self.pending.append(DONE)
        self.done = True

    async def aclose(self) -> None:
        self.done = True
        self.pending.clear()
        self.run.close()
