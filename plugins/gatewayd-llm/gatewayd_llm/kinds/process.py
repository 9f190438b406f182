"""``kind: process``: a local command-line model, one child process per request.

Config (an upstream of ``kind: process``)::

    upstreams:
      cli:
        kind: process
        command: ["my-model-cli", "--model", "{model}", "--max-tokens", "{max_tokens}"]
        timeout: 120s            # the whole run; then SIGTERM, SIGKILL after kill_grace
        env: {MODEL_TOKEN: "${MODEL_TOKEN}"}   # secrets: masked in every log line
        cwd: /srv/models
        max_concurrency: 4       # processes at once; more: 429 (after queue_timeout)
        max_output_bytes: 16MiB  # then the process is killed, finish_reason "length"
        memory: 1GiB             # RLIMIT_AS of the process and its children
        cpu_seconds: 300         # RLIMIT_CPU
        sandbox: true            # run under bubblewrap (refused when bwrap is missing)

How it runs (never through a shell):

- ``command`` is an argv list; each element is formatted on its own (``{model}``: the
  deployment's model, ``{max_tokens}``: the request's, else ``max_tokens``; ``{{``/``}}`` are
  literal braces) and never split. ``command[0]`` is a path, or a name looked up in ``PATH``.
- The environment is not the daemon's (it may hold provider keys): ``PATH``, ``HOME`` and
  ``LANG`` (``C.UTF-8`` unless set), the variables named in ``pass_env``, then ``env``.
- The prompt is written to stdin, which is then closed. A chat request is rendered as plain text,
  one line per message, ``<role>: <content>`` (content as is, newlines included; only the text
  parts of a content list), and a last line ``assistant:``::

      system: You are terse.
      user: Hello
      assistant:

  A ``/v1/completions`` request writes its ``prompt`` as is. Embeddings are refused (400).
- stdout is the answer, streamed: each read (up to 4 KiB, as it arrives) is decoded as UTF-8
  incrementally (a character split across reads waits for its last byte; invalid bytes become
  U+FFFD) and becomes one OpenAI chunk; not streamed, the whole of stdout is one completion.
  stderr is kept (its last 2 KiB) for the log only: it may contain secrets, so the client gets
  a generic message and the log a masked excerpt.
- Usage is estimated (:mod:`gatewayd_llm.tokens`: about 4 characters a token) and shown in
  the answer (``usage``, and the usage chunk of a stream), but never reported to the exchange
  as the provider's: the plugin records it as estimated.
- Failures: the command cannot be started -> ``UpstreamConnectError`` (``connect``); no output
  within ``timeouts.read`` or past ``timeout`` -> the process group is killed and
  ``UpstreamTimeout`` (504) before the first output, :class:`StreamFailed` ``stall`` after it;
  exit status != 0 -> 502 (``process_failed``) before any output, ``StreamFailed("provider")``
  after it. ``timeouts`` default to ``read`` = ``total`` = ``timeout``.
- Every process is started in a session of its own (``start_new_session``), so it and whatever it
  spawned form one process group: a cancelled request (the client left, ``aclose()`` of the
  body) kills the group at once with SIGKILL; a timeout sends SIGTERM, then SIGKILL after
  ``kill_grace``; and when an answer ends, whatever is left of the group is killed.

Resource limits: ``preexec_fn`` is unsafe in a process with threads (the daemon has some), and
``resource.prlimit(pid)`` after the spawn leaves the first instructions of the model unlimited.
So the limits are set by util-linux's ``prlimit`` command, which sets them on itself and then
execs the command: they hold from the first instruction and every descendant inherits them.

Sandbox (``sandbox: true``): the command runs under bubblewrap with read-only binds of ``/usr``,
``/bin``, ``/sbin``, ``/lib*``, ``/etc/alternatives``, ``/etc/ld.so.cache``, the command's
directory, ``cwd`` and ``sandbox_paths``, a private ``/tmp``, ``/proc`` and ``/dev``, every
namespace unshared (no network), ``--die-with-parent`` and ``--new-session``. With ``sandbox:
true`` and no ``bwrap`` the config is refused: it never runs unsandboxed.

Health checks (``health:``) never run a completion: the probe checks that the executable (and
``bwrap``/``prlimit`` when needed) exists and is executable.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from multidict import CIMultiDict
from pydantic import Field, SecretStr, field_validator, model_validator

from gatewayd.chain import (
    Attempt,
    Duration,
    RequestContext,
    Response,
    Size,
    Target,
    TimeoutsConfig,
    UpstreamConfig,
    UpstreamConnectError,
    UpstreamContext,
    UpstreamTimeout,
    WebSocketChannel,
)
from gatewayd_llm import tokens
from gatewayd_llm.exchange import EXCHANGE, Exchange
from gatewayd_llm.kinds.base import no_websockets
from gatewayd_llm.kinds.masking import mask, mask_argv
from gatewayd_llm.kinds.process_run import Expired, ProcessRun, ProcessStream, RunSettings
from gatewayd_llm.kinds.translate import (
    BadRequest,
    ChunkWriter,
    chat_completion,
    error_reply,
    json_reply,
    legacy_prompt,
    max_tokens,
    single_choice,
    text_completion,
    text_of,
    unsupported,
    usage_object,
)
from gatewayd_llm.wire import sse_headers

PLACEHOLDERS = frozenset({"model", "max_tokens"})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# -- config --------------------------------------------------------------------------------------


def _template(element: str) -> list[tuple[str, str | None]]:
    """An argv element as (literal, placeholder) parts; ValueError for anything but
    ``{model}``/``{max_tokens}`` (no attribute, index, conversion or format spec)."""
    parts: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in string.Formatter().parse(element):
        if field is not None and (field not in PLACEHOLDERS or spec or conversion):
            raise ValueError(
                f"invalid placeholder {{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} in {element!r} (known: {{model}}, "
                "{max_tokens}; write {{ and }} for literal braces)"
            )
        parts.append((literal, field))
    return parts


class ProcessUpstreamConfig(UpstreamConfig):
    """``kind: process``: a command-line model (see the module's documentation)."""

    kind: Literal["process"] = "process"
    command: list[str] = Field(min_length=1)
    timeout: Duration = 120.0
    kill_grace: Duration = 2.0
    env: dict[str, SecretStr] = {}
    pass_env: list[str] = []
    cwd: Path | None = None
    max_tokens: int = Field(1024, ge=1, description="{max_tokens} when the request has none")
    max_concurrency: int = Field(4, ge=1)
    queue_timeout: Duration = 0.0
    max_output_bytes: Size = 16 * 1024 * 1024
    memory: Size | None = None
    cpu_seconds: int | None = Field(None, ge=1)
    sandbox: bool = False
    sandbox_paths: list[Path] = []

    @model_validator(mode="before")
    @classmethod
    def _timeouts(cls, data: Any) -> Any:
        if isinstance(data, dict) and "timeouts" not in data:
            timeout = data.get("timeout", 120.0)
            data = {**data, "timeouts": {"read": timeout, "total": timeout}}
        return data

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        if not v[0] or "{" in v[0] or "}" in v[0]:
            raise ValueError("command[0] must be the executable (a path or a name, no placeholder)")
        for element in v:
            if "\x00" in element:
                raise ValueError("a NUL byte in the command")
            _template(element)
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name in v:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"invalid environment variable name {name!r}")
        return v

    @field_validator("pass_env")
    @classmethod
    def _pass_env(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"invalid environment variable name {name!r}")
        return v

    @field_validator("cwd", "sandbox_paths")
    @classmethod
    def _absolute(cls, v: Any) -> Any:
        for path in v if isinstance(v, list) else [v]:
            if path is not None and not path.is_absolute():
                raise ValueError(f"{path} is not an absolute path")
        return v

    @model_validator(mode="after")
    def _tools(self) -> ProcessUpstreamConfig:
        # The environment decides, so say it when the config is checked (and at every reload).
        if self.sandbox and shutil.which("bwrap") is None:
            raise ValueError(
                "sandbox: true needs bubblewrap, and 'bwrap' is not installed (install the "
                "bubblewrap package, or set sandbox: false to run the command unsandboxed)"
            )
        if (self.memory is not None or self.cpu_seconds is not None) and shutil.which(
            "prlimit"
        ) is None:
            raise ValueError("memory and cpu_seconds need the 'prlimit' command (util-linux)")
        return self


# -- prompts -------------------------------------------------------------------------------------


def render_chat(messages: Any) -> str:
    """Chat messages as the plain text a command-line model reads (see the module docs)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    lines = []
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object", "messages")
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"unsupported message role {role!r}", "messages")
        role = "system" if role == "developer" else role
        lines.append(f"{role}: {text_of(message.get('content'))}")
    lines.append("assistant:")
    return "\n".join(lines)


# -- the kind ------------------------------------------------------------------------------------


class ProcessUpstream:
    """The ``process`` upstream kind: one target (the command), one child process per request."""

    kind: ClassVar[str] = "process"
    Config: ClassVar[type[ProcessUpstreamConfig]] = ProcessUpstreamConfig

    def __init__(self, name: str, config: ProcessUpstreamConfig, context: UpstreamContext) -> None:
        self.name = name
        self.config = config
        self.context = context
        self._targets: list[Target] = context.keep(
            "targets", lambda: [Target(f"process:{config.command[0]}")]
        )
        # Kept while the config is unchanged: processes still running in the old generation
        # count against max_concurrency in the new one.
        self.slots: asyncio.Semaphore = context.keep(
            "slots", lambda: asyncio.Semaphore(config.max_concurrency)
        )
        self.secrets = [s.get_secret_value() for s in config.env.values()]
        self.runs: set[ProcessRun] = set()  # from the spawn until the group is gone

    def targets(self) -> Sequence[Target]:
        return self._targets

    async def start(self) -> None:
        if self.config.sandbox and shutil.which("bwrap") is None:
            raise RuntimeError(
                f"upstream '{self.name}': sandbox: true needs bubblewrap ('bwrap' is missing)"
            )

    async def close(self) -> None:
        """Kill what still runs (nothing once the generation drained: a stream nobody reads
        any more, at most) and wait until every group is gone."""
        closing = [run.close() for run in list(self.runs)]
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)

    def ended(self, run: ProcessRun) -> None:
        """A run's group is gone: its slot is free."""
        if run in self.runs:
            self.runs.discard(run)
            self.slots.release()

    # -- what runs -------------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        return environment(self.config)

    def executable(self, env: dict[str, str]) -> str | None:
        """The command's executable, resolved (None: missing or not executable)."""
        return executable(self.config, env)

    def argv(self, executable: str, values: dict[str, str]) -> list[str]:
        """The whole argv: [prlimit ...] [bwrap ...] executable args..."""
        args = [executable]
        for element in self.config.command[1:]:
            args.append("".join(lit + (values[f] if f else "") for lit, f in _template(element)))
        cfg = self.config
        if cfg.sandbox:
            args = [*sandbox_args(executable, cfg), *args]
        limits = []
        if cfg.memory is not None:
            limits.append(f"--as={cfg.memory}")
        if cfg.cpu_seconds is not None:
            limits.append(f"--cpu={cfg.cpu_seconds}:{cfg.cpu_seconds + 1}")
        if limits:
            prlimit = shutil.which("prlimit")
            if prlimit is None:
                raise FileNotFoundError("prlimit")
            args = [prlimit, *limits, "--", *args]
        return args

    # -- the upstream interface ------------------------------------------------------------------

    async def send(
        self,
        target: Target,
        attempt: Attempt,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
    ) -> Response:
        exchange = ctx.state.get(EXCHANGE)
        if not isinstance(exchange, Exchange):
            reply = self.probe()
        else:
            reply = await self.call(exchange, attempt, ctx.request_id, timeouts)
        attempt.status = reply.status
        return reply

    def probe(self) -> Response:
        """The health check: the executables exist and are executable (nothing is run)."""
        env = self.environment()
        missing = self.executable(env) is None
        if self.config.sandbox and shutil.which("bwrap") is None:
            missing = True
        if (self.config.memory or self.config.cpu_seconds) and shutil.which("prlimit") is None:
            missing = True
        if missing:
            return error_reply(503, f"the command of upstream '{self.name}' cannot be run")
        return json_reply({"object": "list", "data": []})

    async def call(
        self, exchange: Exchange, attempt: Attempt, request_id: str, timeouts: TimeoutsConfig
    ) -> Response:
        if exchange.operation == "embeddings":
            return unsupported("embeddings", self.kind)
        body = exchange.body
        try:
            single_choice(body)
            if exchange.operation == "chat":
                prompt = render_chat(body.get("messages"))
            else:
                prompt = legacy_prompt(body)
            limit = max_tokens(body) or self.config.max_tokens
        except BadRequest as exc:
            return error_reply(400, exc.message, None, exc.param)
        model = str(body.get("model", ""))
        if not await self.acquire():
            return error_reply(
                429,
                f"upstream '{self.name}' is running {self.config.max_concurrency} model "
                "processes already (max_concurrency)",
                "process_busy",
                retry_after="1",
            )
        run = await self.spawn(model, limit, prompt.encode(), attempt, request_id, timeouts)
        writer = ChunkWriter(exchange.operation, model)
        prompt_tokens = tokens.prompt_tokens(exchange.operation, body)
        try:
            if exchange.stream:
                return await self.stream(run, exchange, writer, prompt_tokens, attempt)
            return await self.whole(run, exchange, writer, prompt_tokens, attempt)
        except BaseException:
            run.close()  # cancelled, or failed: the group is killed at once
            raise

    async def acquire(self) -> bool:
        """A slot of ``max_concurrency``, waiting at most ``queue_timeout`` for one."""
        if not self.slots.locked():
            await self.slots.acquire()  # at once
            return True
        if not self.config.queue_timeout:
            return False
        try:
            async with asyncio.timeout(self.config.queue_timeout):
                await self.slots.acquire()
        except TimeoutError:
            return False
        return True

    async def spawn(
        self,
        model: str,
        limit: int,
        prompt: bytes,
        attempt: Attempt,
        request_id: str,
        timeouts: TimeoutsConfig,
    ) -> ProcessRun:
        env = self.environment()
        cwd = str(self.config.cwd) if self.config.cwd else None
        try:
            executable = self.executable(env)
            if executable is None:
                raise FileNotFoundError(self.config.command[0])
            argv = self.argv(executable, {"model": model, "max_tokens": str(limit)})
            self.context.logger.info(
                "starting model process",
                extra={
                    "upstream": self.name,
                    "request_id": request_id,
                    "argv": mask_argv(argv, self.secrets),
                },
            )
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except BaseException as exc:
            self.slots.release()
            if not isinstance(exc, OSError):
                raise
            attempt.error = "connect"
            self.context.logger.warning(
                "model process cannot be started",
                extra={
                    "upstream": self.name,
                    "request_id": request_id,
                    "error": mask(exc.strerror or type(exc).__name__, self.secrets),
                },
            )
            raise UpstreamConnectError(
                f"the command of upstream '{self.name}' cannot be started"
            ) from None
        cfg = self.config
        settings = RunSettings(cfg.timeout, timeouts.read, cfg.kill_grace, cfg.max_output_bytes)
        run = ProcessRun(
            proc,
            prompt,
            settings,
            on_done=self.ended,
            logger=self.context.logger,
            log_extra={"upstream": self.name, "request_id": request_id},
            secrets=self.secrets,
        )
        self.runs.add(run)
        return run

    async def stream(
        self,
        run: ProcessRun,
        exchange: Exchange,
        writer: ChunkWriter,
        prompt_tokens: int,
        attempt: Attempt,
    ) -> Response:
        """The head once the process wrote something (or ended): before that, a failure is
        still an error reply (the plugin may fall back)."""
        body = ProcessStream(run, exchange, writer, prompt_tokens)
        try:
            first = await run.read()
        except Expired:
            attempt.error = "timeout"
            raise UpstreamTimeout(f"upstream '{self.name}' timed out") from None
        if first:
            body.feed(first)
            if not body.pending:  # a character still incomplete: the role chunk goes first
                body.pending.extend(writer.start())
            if run.truncated:
                await body.end()
            return Response(200, sse_headers(), body)
        try:
            status = await run.exit_status()
        except Expired:
            attempt.error = "timeout"
            raise UpstreamTimeout(f"upstream '{self.name}' timed out") from None
        if status != 0:
            return self.failed(run, status)
        await body.end()
        return Response(200, sse_headers(), body)

    async def whole(
        self,
        run: ProcessRun,
        exchange: Exchange,
        writer: ChunkWriter,
        prompt_tokens: int,
        attempt: Attempt,
    ) -> Response:
        out = bytearray()
        try:
            while data := await run.read():
                out += data
                if run.truncated:
                    break
            status = 0 if run.truncated else await run.exit_status()
        except Expired:
            attempt.error = "timeout"
            raise UpstreamTimeout(f"upstream '{self.name}' timed out") from None
        if status != 0:
            return self.failed(run, status)
        run.close()
        text = out.decode("utf-8", "replace")
        if text:
            exchange.mark_first_byte()
        reason = "length" if run.truncated else "stop"
        usage = usage_object(prompt_tokens, tokens.text_tokens(text))
        if exchange.operation == "chat":
            answer = chat_completion(writer.id, writer.model, text, [], reason, usage)
        else:
            answer = text_completion(writer.id, writer.model, text, reason, usage)
        return Response(
            200,
            CIMultiDict({"Content-Type": "application/json"}),
            json.dumps(answer, separators=(",", ":")).encode(),
        )

    def failed(self, run: ProcessRun, status: int) -> Response:
        run.log_failure(status)
        run.close()
        return error_reply(
            502, f"the model process of upstream '{self.name}' failed", "process_failed"
        )

    async def upgrade(
        self,
        target: Target,
        attempt: Attempt,
        ctx: RequestContext,
        path: str,
        headers: CIMultiDict[str],
        timeouts: TimeoutsConfig,
        protocols: Sequence[str],
        max_message: int,
    ) -> WebSocketChannel:
        raise no_websockets(self.name, self.kind, attempt)


def sandbox_args(executable: str, config: ProcessUpstreamConfig) -> list[str]:
    """bubblewrap's arguments (up to and including ``--``) for running ``executable``."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise FileNotFoundError("bwrap")
    # The fresh /proc, /dev and /tmp first: bwrap mounts in order, so a bind below /tmp (a
    # command or cwd under /tmp) must come after the tmpfs or the tmpfs would hide it.
    args = [bwrap, "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    args += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in ("/etc/alternatives", "/etc/ld.so.cache", "/etc/localtime"):
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    binds = {os.path.dirname(executable), os.path.dirname(os.path.realpath(executable))}
    binds.update(str(p) for p in config.sandbox_paths)
    if config.cwd is not None:
        binds.add(str(config.cwd))
    for path in sorted(binds):
        if path != "/usr" and not path.startswith("/usr/") and os.path.exists(path):
            args += ["--ro-bind", path, path]
    args += ["--unshare-all", "--unshare-net", "--die-with-parent", "--new-session"]
    args += ["--chdir", str(config.cwd or "/tmp"), "--"]
    return args


__all__ = ["ProcessUpstream", "ProcessUpstreamConfig", "render_chat", "sandbox_args"]


def environment(config: ProcessUpstreamConfig) -> dict[str, str]:
    """The environment a command of ``config`` runs with."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"}
    for name in ("HOME", "LANG", *config.pass_env):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update((k, v.get_secret_value()) for k, v in config.env.items())
    return env


def executable(config: ProcessUpstreamConfig, env: dict[str, str]) -> str | None:
    """The command's executable, resolved (None: missing or not executable)."""
    command = config.command[0]
    if "/" in command:
        path = os.path.join(config.cwd or os.getcwd(), command)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return shutil.which(command, path=env.get("PATH"))
