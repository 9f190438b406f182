"""``kind: process`` against a real child process: tests/fake_model_cli.py (see its docstring)."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gatewayd_llm import tokens
from gatewayd_llm.exchange import EXCHANGE, Exchange, Operation, StreamFailed
from gatewayd_llm.kinds.masking import mask, mask_argv
from gatewayd_llm.kinds.process import (
    ProcessUpstream,
    ProcessUpstreamConfig,
    render_chat,
    sandbox_args,
)
from gatewayd_llm.kinds.translate import BadRequest
from multidict import CIMultiDict
from pydantic import ValidationError

from gatewayd.chain import (
    Attempt,
    Request,
    RequestContext,
    Response,
    RouteInfo,
    TimeoutsConfig,
    UpstreamConnectError,
    UpstreamContext,
    UpstreamKind,
    UpstreamTimeout,
)

CLI = str(Path(__file__).with_name("fake_model_cli.py"))
PYTHON = sys.executable
HAVE_BWRAP = shutil.which("bwrap") is not None
LOG = "test.llm.process"


def command(*extra: str) -> list[str]:
    return [PYTHON, CLI, "--model", "{model}", "--max-tokens", "{max_tokens}", *extra]


async def make_kind(**config: Any) -> ProcessUpstream:
    cfg = ProcessUpstreamConfig.model_validate({"kind": "process", **config})
    ctx = UpstreamContext(None, logging.getLogger(LOG), lambda key, f: f())  # type: ignore[arg-type]
    kind = ProcessUpstream("cli", cfg, ctx)
    await kind.start()
    return kind


def chat(text: str = "hello there world", stream: bool = False, **body: Any) -> Exchange:
    return Exchange(
        "chat",
        {
            "model": "local-7b",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": text},
            ],
            "stream": stream,
            **({"stream_options": {"include_usage": True}} if stream else {}),
            **body,
        },
        "echo",
        "echo#0",
    )


def completion(prompt: str, stream: bool = False) -> Exchange:
    op: Operation = "completions"
    return Exchange(op, {"model": "local-7b", "prompt": prompt, "stream": stream}, "echo", "echo#0")


def request_ctx(exchange: Exchange | None) -> RequestContext:
    req = Request(
        "POST",
        "/v1/chat/completions",
        "",
        CIMultiDict({"Authorization": "Bearer gw-client-key"}),
        "gw.example",
        "http",
        "127.0.0.1",
        b"{}",
        2,
    )
    ctx = RequestContext(req, "rid-proc-1", RouteInfo("llm", None, ""))
    if exchange is not None:
        ctx.state[EXCHANGE] = exchange
    return ctx


async def send(kind: ProcessUpstream, ex: Exchange | None) -> tuple[Response, Attempt]:
    target = kind.targets()[0]
    attempt = Attempt(target.id)
    ctx = request_ctx(ex)
    resp = await kind.send(
        target, attempt, ctx, "/v1/chat/completions", CIMultiDict(), kind.config.timeouts
    )
    return resp, attempt


def events_of(raw: bytes) -> list[Any]:
    assert raw.endswith(b"\n\n"), raw
    out: list[Any] = []
    for event in raw.split(b"\n\n")[:-1]:
        assert event.startswith(b"data: "), event
        data = event[6:]
        out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


async def read_stream(body: Any) -> tuple[list[Any], list[float]]:
    """Every event and the time each body chunk arrived."""
    assert isinstance(body, AsyncIterator)
    events: list[Any] = []
    times: list[float] = []
    async for chunk in body:
        times.append(time.monotonic())
        events.extend(events_of(chunk))
    return events, times


def content(events: list[Any]) -> str:
    text = ""
    for e in events:
        if isinstance(e, dict) and e.get("choices"):
            choice = e["choices"][0]
            text += (choice.get("delta") or {}).get("content") or choice.get("text") or ""
    return text


def live(marker: str) -> list[int]:
    """Pids of the processes (zombies aside) whose argv holds ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in ("Z", "X"):
            pids.append(int(entry))
    return pids


async def wait_live(marker: str, count: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(pids := live(marker)) < count:
        assert time.monotonic() < deadline, f"{count} processes never started"
        await asyncio.sleep(0.01)
    return pids


async def gone_within(marker: str, seconds: float) -> float:
    """How long until no process with ``marker`` is left (fails after ``seconds``)."""
    start = time.monotonic()
    while live(marker):
        elapsed = time.monotonic() - start
        assert elapsed < seconds, f"still running after {elapsed * 1000:.0f} ms: {live(marker)}"
        await asyncio.sleep(0.002)
    return time.monotonic() - start


# -- config --------------------------------------------------------------------------------------


def test_is_an_upstream_kind_registered_by_entry_point() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="gatewayd.upstreams") if e.name == "process"]
    assert ep.load() is ProcessUpstream
    cfg = ProcessUpstreamConfig.model_validate({"kind": "process", "command": ["x"]})
    kind = ProcessUpstream(
        "cli", cfg, UpstreamContext(None, logging.getLogger(LOG), lambda k, f: f())
    )  # type: ignore[arg-type]
    assert isinstance(kind, UpstreamKind)


@pytest.mark.parametrize(
    ("element", "error"),
    [
        ("{prompt}", "invalid placeholder {prompt}"),
        ("{model.__class__}", "invalid placeholder"),
        ("{model!r}", "invalid placeholder {model!r}"),
        ("{model:>10}", "invalid placeholder {model:>10}"),
        ("{0}", "invalid placeholder {0}"),
        ("--x={", "Single '{'"),
    ],
)
def test_only_known_placeholders_are_accepted(element: str, error: str) -> None:
    with pytest.raises(ValidationError, match=error.replace("{", r"\{").replace("}", r"\}")):
        ProcessUpstreamConfig.model_validate({"kind": "process", "command": ["cli", element]})


def test_the_executable_has_no_placeholder_and_paths_are_absolute() -> None:
    for bad in ({"command": ["{model}"]}, {"command": []}, {"command": [""]}):
        with pytest.raises(ValidationError):
            ProcessUpstreamConfig.model_validate({"kind": "process", **bad})
    with pytest.raises(ValidationError, match="not an absolute path"):
        ProcessUpstreamConfig.model_validate({"kind": "process", "command": ["x"], "cwd": "rel"})
    with pytest.raises(ValidationError, match="invalid environment variable name"):
        ProcessUpstreamConfig.model_validate(
            {"kind": "process", "command": ["x"], "env": {"A=B": "1"}}
        )


def test_timeouts_default_to_the_timeout() -> None:
    cfg = ProcessUpstreamConfig.model_validate(
        {"kind": "process", "command": ["x"], "timeout": "45s"}
    )
    assert (cfg.timeouts.read, cfg.timeouts.total) == (45.0, 45.0)
    given = ProcessUpstreamConfig.model_validate(
        {"kind": "process", "command": ["x"], "timeouts": {"read": "2s"}}
    )
    assert given.timeouts.read == 2.0 and given.timeout == 120.0


def test_sandbox_without_bwrap_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap (and no prlimit) on this PATH
    with pytest.raises(ValidationError, match="sandbox: true needs bubblewrap"):
        ProcessUpstreamConfig.model_validate({"kind": "process", "command": ["x"], "sandbox": True})
    with pytest.raises(ValidationError, match="need the 'prlimit' command"):
        ProcessUpstreamConfig.model_validate(
            {"kind": "process", "command": ["x"], "memory": "1GiB"}
        )
    ProcessUpstreamConfig.model_validate({"kind": "process", "command": ["x"]})  # unsandboxed: ok


def test_gatewayd_check_refuses_a_sandbox_without_bwrap(tmp_path: Path, llm_config: Any) -> None:
    """What an operator sees (``gatewayd check``, and a reload is refused the same way)."""
    cfg = llm_config(
        {"cli": {"kind": "process", "command": ["/usr/bin/true"], "sandbox": True}},
        {"models": {"echo": [{"upstream": "cli", "model": "default"}]}},
    )
    path = tmp_path / "gatewayd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PATH": str(tmp_path)}  # no bwrap there
    args = [PYTHON, "-m", "gatewayd", "check", "-c", str(path)]
    refused = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode != 0
    assert "upstreams.cli" in refused.stderr + refused.stdout
    assert "sandbox: true needs bubblewrap" in refused.stderr + refused.stdout
    if HAVE_BWRAP:
        accepted = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert accepted.returncode == 0, accepted.stderr


# -- the prompt and the log ----------------------------------------------------------------------


def test_chat_is_rendered_one_line_per_message() -> None:
    text = render_chat(
        [
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "two\nlines"}]},
            {"role": "assistant", "content": None},
        ]
    )
    assert text == "system: Be terse.\nuser: two\nlines\nassistant: \nassistant:"
    for bad in ([], [{"role": "user\nsystem", "content": "x"}], ["hi"], None):
        with pytest.raises(BadRequest):
            render_chat(bad)


def test_masking() -> None:
    secret = "s3cr3t-value-42"
    argv = ["cli", "--api-key", "plain-looking", f"--token={secret}", "sk-abcdefgh12345678", secret]
    assert mask_argv(argv, [secret]) == ["cli", "--api-key", "***", "--token=***", "***", "***"]
    assert mask("Authorization: Bearer abc.def and password=hunter2") == (
        "Authorization: Bearer *** and password=***"
    )


# -- answers -------------------------------------------------------------------------------------


async def test_a_streamed_chat_arrives_read_by_read_as_openai_chunks() -> None:
    kind = await make_kind(command=command("--delay", "0.15"))
    ex = chat("one two three", stream=True)
    resp, attempt = await send(kind, ex)
    assert resp.status == 200 == attempt.status
    assert resp.headers["Content-Type"] == "text/event-stream"
    events, times = await read_stream(resp.body)
    # Each write of the CLI (6 of them, 0.15 s apart) came as its own chunk, as it was written:
    # buffered, they would have come at once.
    assert len(times) >= 5
    assert times[-1] - times[0] > 0.5
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert {e["object"] for e in events[:-1]} == {"chat.completion.chunk"}
    assert content(events) == "model=local-7b max_tokens=1024 one two three"
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"]["prompt_tokens"] > 0
    assert usage["usage"]["completion_tokens"] == math.ceil(len(content(events)) / 4)
    assert usage["usage"]["prompt_tokens"] == tokens.prompt_tokens("chat", ex.body)
    assert events[-1] == "[DONE]"
    assert ex.usage is None  # an estimate: never reported as the provider's
    assert ex.first_byte_at is not None and times[-1] - ex.first_byte_at > 0.5
    await kind.close()


async def test_a_whole_chat_is_one_completion_and_max_tokens_is_the_requests() -> None:
    kind = await make_kind(command=command())
    ex = chat("a b", max_tokens=7)
    resp, _ = await send(kind, ex)
    assert resp.status == 200
    assert isinstance(resp.body, bytes)
    answer = json.loads(resp.body)
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "local-7b"
    assert answer["choices"][0]["message"]["content"] == "model=local-7b max_tokens=7 a b"
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["total_tokens"] > 0 and ex.usage is None
    await kind.close()


async def test_the_prompt_on_stdin_is_the_rendered_chat_and_stdin_is_closed() -> None:
    kind = await make_kind(command=command("--mode", "cat"))
    resp, _ = await send(kind, chat("hi"))
    assert isinstance(resp.body, bytes)
    text = json.loads(resp.body)["choices"][0]["message"]["content"]
    assert text == "system: Be brief.\nuser: hi\nassistant:"
    await kind.close()


async def test_completions_get_their_prompt_as_is() -> None:
    kind = await make_kind(command=command("--mode", "cat"))
    resp, _ = await send(kind, completion("raw\nprompt {x}"))
    assert isinstance(resp.body, bytes)
    answer = json.loads(resp.body)
    assert answer["object"] == "text_completion"
    assert answer["choices"][0]["text"] == "raw\nprompt {x}"
    resp, _ = await send(kind, completion("streamed", stream=True))
    events, _ = await read_stream(resp.body)
    assert content(events) == "streamed"
    assert events[0]["object"] == "text_completion"
    await kind.close()


async def test_utf8_split_across_reads_is_never_split_in_a_chunk() -> None:
    kind = await make_kind(command=command("--mode", "utf8", "--delay", "0.01"))
    resp, _ = await send(kind, chat(stream=True))
    events, _ = await read_stream(resp.body)
    pieces = [
        e["choices"][0]["delta"]["content"]
        for e in events
        if isinstance(e, dict) and e.get("choices") and e["choices"][0]["delta"].get("content")
    ]
    assert "".join(pieces) == "héllo wörld 🙂 ✓"
    assert len(pieces) > 5 and "\ufffd" not in "".join(pieces)
    await kind.close()


async def test_literal_braces_and_the_executable_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{Path(PYTHON).parent}:{os.environ['PATH']}")
    kind = await make_kind(command=[Path(PYTHON).name, "-c", "print('{{x}}', end='')"])
    resp, _ = await send(kind, chat())
    assert isinstance(resp.body, bytes)
    assert json.loads(resp.body)["choices"][0]["message"]["content"] == "{x}"
    await kind.close()


async def test_embeddings_and_several_choices_are_refused() -> None:
    kind = await make_kind(command=command())
    resp, _ = await send(kind, Exchange("embeddings", {"model": "m", "input": "x"}, "e", "e#0"))
    assert resp.status == 400
    resp, _ = await send(kind, chat(n=2))
    assert resp.status == 400
    assert isinstance(resp.body, bytes)
    assert json.loads(resp.body)["error"]["param"] == "n"
    await kind.close()


# -- the environment and the log -----------------------------------------------------------------


async def test_the_environment_is_not_the_daemons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM3_PARENT_SECRET", "parent-only")
    monkeypatch.setenv("LLM3_PASSED", "passed-on")

    async def env_of(name: str) -> str:
        kind = await make_kind(
            command=command("--mode", "env", "--env", name),
            env={"MODEL_TOKEN": "from-config"},
            pass_env=["LLM3_PASSED"],
        )
        resp, _ = await send(kind, chat())
        await kind.close()
        assert isinstance(resp.body, bytes)
        return str(json.loads(resp.body)["choices"][0]["message"]["content"])

    assert await env_of("LLM3_PARENT_SECRET") == "<unset>"
    assert await env_of("MODEL_TOKEN") == "from-config"
    assert await env_of("LLM3_PASSED") == "passed-on"


async def test_arguments_are_logged_once_with_secrets_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOG)
    kind = await make_kind(
        command=[*command(), "--api-key", "abc123", "--extra=my-env-secret-1"],
        env={"CLI_SECRET": "my-env-secret-1"},
    )
    resp, _ = await send(kind, chat())
    assert resp.status == 200
    started = [r for r in caplog.records if r.getMessage() == "starting model process"]
    assert len(started) == 1
    argv = started[0].argv  # type: ignore[attr-defined]
    assert argv[:6] == [PYTHON, CLI, "--model", "local-7b", "--max-tokens", "1024"]
    assert argv[6:] == ["--api-key", "***", "--extra=***"]
    assert started[0].request_id == "rid-proc-1"  # type: ignore[attr-defined]
    assert "abc123" not in caplog.text and "my-env-secret-1" not in caplog.text
    await kind.close()


# -- failures ------------------------------------------------------------------------------------


async def test_a_failure_before_any_output_is_a_502_and_stderr_stays_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, LOG)
    kind = await make_kind(command=command("--mode", "fail"))
    for stream in (False, True):
        resp, _ = await send(kind, chat(stream=stream))
        assert resp.status == 502
        assert isinstance(resp.body, bytes)
        error = json.loads(resp.body)["error"]
        assert error["code"] == "process_failed" and error["type"] == "api_error"
        assert "weights" not in resp.body.decode() and "hf_" not in resp.body.decode()
    failed = [r for r in caplog.records if r.getMessage() == "model process failed"]
    assert len(failed) == 2 and failed[0].exit_status == 3  # type: ignore[attr-defined]
    logged = failed[0].stderr  # type: ignore[attr-defined]
    assert "cannot load weights" in logged
    assert "hf_abcdefghijklmnop" not in logged and "token=***" in logged
    await kind.close()


async def test_a_failure_after_output_fails_the_stream() -> None:
    kind = await make_kind(command=command("--mode", "fail-after", "--delay", "0.05"))
    resp, _ = await send(kind, chat(stream=True))
    assert resp.status == 200
    assert isinstance(resp.body, AsyncIterator)
    got = b""
    with pytest.raises(StreamFailed) as failed:
        async for chunk in resp.body:
            got += chunk
    assert failed.value.kind == "provider"
    assert content(events_of(got)) == "partial answer"
    resp, _ = await send(kind, chat())  # not streamed: all or nothing
    assert resp.status == 502
    await kind.close()


async def test_a_missing_command_is_a_connect_error_and_the_probe_says_so(tmp_path: Path) -> None:
    kind = await make_kind(command=[str(tmp_path / "nope")])
    with pytest.raises(UpstreamConnectError):
        await send(kind, chat())
    target = kind.targets()[0]
    attempt = Attempt(target.id)
    with pytest.raises(UpstreamConnectError):
        await kind.send(target, attempt, request_ctx(chat()), "/", CIMultiDict(), TimeoutsConfig())
    assert attempt.error == "connect"
    probe, _ = await send(kind, None)
    assert probe.status == 503
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    kind2 = await make_kind(command=[str(plain)])
    assert (await send(kind2, None))[0].status == 503
    plain.chmod(0o755)
    assert (await send(kind2, None))[0].status == 200
    assert live(str(plain)) == []  # the probe ran nothing
    await kind.close()
    await kind2.close()


async def test_no_output_within_the_read_timeout_is_a_504_and_the_group_is_killed() -> None:
    marker = uuid.uuid4().hex
    kind = await make_kind(
        command=command("--mode", "grandchild", "--silent", "--marker", marker),
        timeouts={"read": "0.5s", "total": "5s"},
        kill_grace="0.2s",
    )
    with pytest.raises(UpstreamTimeout):
        await send(kind, chat(stream=True))
    await gone_within(marker, 1.0)
    await kind.close()


async def test_a_stall_after_output_fails_the_stream_and_kills_the_group() -> None:
    kind = await make_kind(
        command=command("--mode", "hang-after"), timeouts={"read": "0.3s"}, kill_grace="0.2s"
    )
    resp, _ = await send(kind, chat(stream=True))
    assert isinstance(resp.body, AsyncIterator)
    got = b""
    with pytest.raises(StreamFailed) as failed:
        async for chunk in resp.body:
            got += chunk
    assert failed.value.kind == "stall" and failed.value.status == 504
    assert content(events_of(got)) == "thinking"
    await asyncio.wait_for(kind.close(), 2)


async def test_the_whole_run_has_a_timeout_and_sigterm_is_followed_by_sigkill() -> None:
    marker = uuid.uuid4().hex
    kind = await make_kind(
        command=command("--mode", "ignore-term", "--marker", marker),
        timeout="0.4s",
        kill_grace="0.3s",
    )
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await send(kind, chat())
    assert 0.35 < time.monotonic() - started < 2.0
    await gone_within(marker, 1.5)  # SIGKILL after kill_grace
    await kind.close()


async def test_a_stream_nobody_reads_is_killed_at_the_timeout() -> None:
    marker = uuid.uuid4().hex
    kind = await make_kind(
        command=command("--mode", "grandchild", "--marker", marker), timeout="0.5s"
    )
    resp, _ = await send(kind, chat(stream=True))
    assert resp.status == 200  # and the body is dropped, never read nor closed
    await wait_live(marker, 2)
    await gone_within(marker, 3.0)
    await kind.close()


async def test_closing_the_upstream_kills_what_still_runs() -> None:
    marker = uuid.uuid4().hex
    kind = await make_kind(command=command("--mode", "grandchild", "--marker", marker))
    resp, _ = await send(kind, chat(stream=True))
    assert resp.status == 200  # a stream still open when its generation closes
    await wait_live(marker, 2)
    await asyncio.wait_for(kind.close(), 1.0)
    assert live(marker) == [] and kind.runs == set()


# -- cancellation: the child and its grandchild are gone within 100 ms --------------------------


async def test_closing_the_stream_kills_the_child_and_its_grandchild() -> None:
    marker = uuid.uuid4().hex
    kind = await make_kind(command=command("--mode", "grandchild", "--marker", marker))
    resp, _ = await send(kind, chat(stream=True))
    assert isinstance(resp.body, AsyncIterator)
    await anext(resp.body)
    await anext(resp.body)
    assert len(await wait_live(marker, 2)) == 2  # the child and the grandchild
    closed = time.monotonic()
    await resp.body.aclose()  # type: ignore[attr-defined]
    assert await gone_within(marker, 0.1) + (time.monotonic() - closed) < 0.2
    await kind.close()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_cancelled_request_kills_the_group_before_the_first_token(stream: bool) -> None:
    marker = uuid.uuid4().hex
    kind = await make_kind(command=command("--mode", "grandchild", "--silent", "--marker", marker))
    task = asyncio.create_task(send(kind, chat(stream=stream)))
    await wait_live(marker, 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await gone_within(marker, 0.1)
    await kind.close()


# -- limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_output_past_max_output_bytes_is_cut_and_the_process_killed(stream: bool) -> None:
    kind = await make_kind(
        command=command("--mode", "flood", "--bytes", str(50 << 20)), max_output_bytes="100KiB"
    )
    resp, _ = await send(kind, chat(stream=stream))
    assert resp.status == 200
    if stream:
        events, _ = await read_stream(resp.body)
        text = content(events)
        assert events[-3]["choices"][0]["finish_reason"] == "length"
    else:
        assert isinstance(resp.body, bytes)
        answer = json.loads(resp.body)
        text = answer["choices"][0]["message"]["content"]
        assert answer["choices"][0]["finish_reason"] == "length"
    assert text == "x" * 100 * 1024
    await asyncio.wait_for(kind.close(), 2)


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux's prlimit")
async def test_memory_and_cpu_limits_hold(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOG)
    kind = await make_kind(command=command("--mode", "memory"), memory="200MiB")
    resp, _ = await send(kind, chat())
    assert resp.status == 502  # MemoryError: 512 MiB > RLIMIT_AS
    unlimited = await make_kind(command=command("--mode", "memory"))
    assert (await send(unlimited, chat()))[0].status == 200
    spin = await make_kind(command=command("--mode", "spin"), cpu_seconds=1, timeout="20s")
    started = time.monotonic()
    resp, _ = await send(spin, chat())
    assert resp.status == 502 and time.monotonic() - started < 15  # 1 s of CPU, a busy host
    failed = [r for r in caplog.records if r.getMessage() == "model process failed"]
    assert failed[-1].signal == "SIGXCPU"  # type: ignore[attr-defined]
    for k in (kind, unlimited, spin):
        await k.close()


async def test_max_concurrency_refuses_with_429_and_queue_timeout_waits() -> None:
    kind = await make_kind(command=command("--mode", "hang-after"), max_concurrency=1)
    first, _ = await send(kind, chat(stream=True))
    busy, _ = await send(kind, chat(stream=True))
    assert busy.status == 429 and busy.headers["Retry-After"] == "1"
    assert isinstance(busy.body, bytes)
    assert json.loads(busy.body)["error"]["code"] == "process_busy"
    await first.body.aclose()  # type: ignore[union-attr]
    await kind.close()  # reaped: the slot is free again
    assert not kind.slots.locked()
    again, _ = await send(kind, chat(stream=True))
    assert again.status == 200
    await again.body.aclose()  # type: ignore[union-attr]
    queued = await make_kind(
        command=command("--delay", "0.05"), max_concurrency=1, queue_timeout="5s"
    )
    results = await asyncio.gather(*(send(queued, chat("a b")) for _ in range(3)))
    assert [r.status for r, _ in results] == [200, 200, 200]
    await queued.close()


async def test_slots_are_kept_across_a_reload_of_the_same_config() -> None:
    kept: dict[str, Any] = {}

    def keep(key: str, factory: Any) -> Any:
        return kept.setdefault(key, factory())

    cfg = ProcessUpstreamConfig.model_validate(
        {"kind": "process", "command": command("--mode", "hang-after"), "max_concurrency": 1}
    )
    old = ProcessUpstream("cli", cfg, UpstreamContext(None, logging.getLogger(LOG), keep))  # type: ignore[arg-type]
    new = ProcessUpstream("cli", cfg, UpstreamContext(None, logging.getLogger(LOG), keep))  # type: ignore[arg-type]
    assert new.slots is old.slots and new.targets()[0] is old.targets()[0]
    running, _ = await send(old, chat(stream=True))
    assert (await send(new, chat(stream=True)))[0].status == 429
    await running.body.aclose()  # type: ignore[union-attr]
    await old.close()


# -- the sandbox ---------------------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap (bwrap) is not installed")
async def test_the_sandbox_has_no_network_and_sees_only_what_is_bound(tmp_path: Path) -> None:
    binds = [str(Path(CLI).parent), sys.prefix, sys.base_prefix]
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = str(server.sockets[0].getsockname()[1])
    net = command("--mode", "net", "--port", port)
    outside = await make_kind(command=net)
    inside = await make_kind(command=net, sandbox=True, sandbox_paths=binds)

    async def said(kind: ProcessUpstream) -> str:
        resp, _ = await send(kind, chat())
        assert resp.status == 200, resp.body
        assert isinstance(resp.body, bytes)
        return str(json.loads(resp.body)["choices"][0]["message"]["content"])

    assert await said(outside) == "net=ok"
    assert await said(inside) == "net=none"
    private = tmp_path / "private.txt"
    private.write_text("not for the model")
    paths = f"/etc/passwd,{private},{CLI}"
    ls = await make_kind(command=command("--mode", "ls", "--paths", paths))
    assert await said(ls) == f"/etc/passwd=True {private}=True {CLI}=True"
    ls = await make_kind(
        command=command("--mode", "ls", "--paths", paths), sandbox=True, sandbox_paths=binds
    )
    assert await said(ls) == f"/etc/passwd=False {private}=False {CLI}=True"
    words = await make_kind(command=command(), sandbox=True, sandbox_paths=binds)
    assert await said(words) == "model=local-7b max_tokens=1024 hello there world"
    for k in (outside, inside, ls, words):
        await k.close()
    server.close()


@pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap (bwrap) is not installed")
async def test_a_sandboxed_command_under_tmp_runs(tmp_path: Path) -> None:
    """The sandbox's own /tmp is a fresh tmpfs; a command (or a checkout) that lives under the
    host's /tmp must still be seen: bwrap mounts in order, the tmpfs goes first."""
    cli = tmp_path / "model_cli.py"
    shutil.copy(CLI, cli)
    assert str(cli).startswith("/tmp/") or not str(tmp_path).startswith("/tmp")
    config = ProcessUpstreamConfig.model_validate(
        {"kind": "process", "command": [PYTHON, str(cli)], "sandbox": True, "cwd": str(tmp_path)}
    )
    args = sandbox_args(PYTHON, config)
    assert args.index("--tmpfs") < args.index(str(tmp_path))
    binds = [str(tmp_path), sys.prefix, sys.base_prefix]
    kind = await make_kind(
        command=[PYTHON, str(cli), "--model", "{model}", "--max-tokens", "{max_tokens}"],
        sandbox=True,
        sandbox_paths=binds,
    )
    resp, _ = await send(kind, chat())
    assert resp.status == 200, resp.body
    assert isinstance(resp.body, bytes)
    assert json.loads(resp.body)["choices"][0]["message"]["content"].startswith("model=")
    await kind.close()


@pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap (bwrap) is not installed")
async def test_a_cancelled_sandboxed_stream_leaves_nothing_behind() -> None:
    marker = uuid.uuid4().hex
    binds = [str(Path(CLI).parent), sys.prefix, sys.base_prefix]
    kind = await make_kind(
        command=command("--mode", "grandchild", "--marker", marker),
        sandbox=True,
        sandbox_paths=binds,
    )
    resp, _ = await send(kind, chat(stream=True))
    assert isinstance(resp.body, AsyncIterator)
    await anext(resp.body)
    await wait_live(marker, 3)  # bwrap, the child and the grandchild
    await resp.body.aclose()  # type: ignore[attr-defined]
    await gone_within(marker, 0.1)
    await kind.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test here on both loops: the daemon runs uvloop, whose subprocesses differ (the
    end-to-end tests run the kind in the daemon: once is enough)."""
    if request.param == "uvloop" and "llm_gateway" in request.fixturenames:
        pytest.skip("end to end: the kind runs in the daemon (uvloop) either way")
    if request.param == "uvloop" and not inspect.iscoroutinefunction(request.function):
        pytest.skip("no event loop")
    if request.param == "uvloop":
        import uvloop

        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


# -- end to end: the daemon, the llm plugin, the official openai SDK ---------------------------


def cli_upstream(*extra: str, **config: Any) -> dict[str, Any]:
    return {"kind": "process", "command": command(*extra), **config}


async def test_through_the_gateway_with_the_openai_sdk(llm_config: Any, llm_gateway: Any) -> None:
    cfg = llm_config(
        {"cli": cli_upstream("--delay", "0.02")},
        {"models": {"echo": [{"upstream": "cli", "model": "default"}]}},
    )
    gw = await llm_gateway(cfg)
    client = gw.client()
    chat = await client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hi there"}], max_tokens=5
    )
    assert chat.choices[0].message.content == "model=default max_tokens=5 hi there"
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage is not None and chat.usage.completion_tokens > 0

    stream = await client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "model=default max_tokens=1024 one two three"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 5
    assert chunks[-1].usage is not None and chunks[-1].choices == []

    stream = await client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "quiet"}], stream=True
    )
    chunks = [c async for c in stream]
    assert all(c.usage is None and c.choices for c in chunks)  # not asked: stripped

    legacy = await client.completions.create(model="echo", prompt="raw words", max_tokens=2)
    assert legacy.choices[0].text == "model=default max_tokens=2 raw words"

    records = await gw.usage(count=4)
    assert [r.source for r in records] == ["estimated"] * 4
    assert {(r.model, r.upstream, r.provider_model, r.status) for r in records} == {
        ("echo", "cli", "default", 200)
    }
    assert [r.stream for r in records] == [False, True, True, False]
    # A whole answer's estimate comes from its text (four characters a token).
    assert records[0].completion_tokens == math.ceil(len("model=default max_tokens=5 hi there") / 4)
    started = [line for line in gw.logs().splitlines() if "starting model process" in line]
    assert len(started) == 4 and all('"argv"' in line for line in started)
    await client.close()


async def test_a_client_leaving_kills_the_process_group_within_100_ms(
    llm_config: Any, llm_gateway: Any
) -> None:
    marker, quiet = uuid.uuid4().hex, uuid.uuid4().hex
    cfg = llm_config(
        {
            "cli": cli_upstream("--mode", "grandchild", "--marker", marker, "--delay", "0.02"),
            "quiet": cli_upstream("--mode", "grandchild", "--silent", "--marker", quiet),
        },
        {
            "models": {
                "echo": [{"upstream": "cli", "model": "default"}],
                "quiet": [{"upstream": "quiet", "model": "default"}],
            }
        },
    )
    gw = await llm_gateway(cfg)
    client = gw.client()
    stream = await client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "x"}], stream=True
    )
    async for c in stream:
        if c.choices and c.choices[0].delta.content:
            break
    assert len(await wait_live(marker, 2)) == 2  # the model and its grandchild
    await stream.close()
    await gone_within(marker, 0.1)

    # Not streamed, before any output: the client gives up, the processes go too.
    task = asyncio.create_task(
        client.chat.completions.create(model="quiet", messages=[{"role": "user", "content": "x"}])
    )
    await wait_live(quiet, 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await gone_within(quiet, 0.1)
    records = await gw.usage(count=2)
    assert [r.cancelled for r in records] == [True, True]
    await client.close()


async def test_a_failing_command_falls_back_before_the_first_byte(
    llm_config: Any, llm_gateway: Any
) -> None:
    cfg = llm_config(
        {"broken": cli_upstream("--mode", "fail"), "cli": cli_upstream()},
        {
            "models": {
                "broken": [{"upstream": "broken", "model": "x"}],
                "echo": [{"upstream": "cli", "model": "default"}],
            },
            "fallbacks": {"broken": ["echo"]},
        },
    )
    gw = await llm_gateway(cfg)
    client = gw.client()
    for stream in (False, True):
        if stream:
            chunks = [
                c
                async for c in await client.chat.completions.create(
                    model="broken", messages=[{"role": "user", "content": "a"}], stream=True
                )
            ]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            chat = await client.chat.completions.create(
                model="broken", messages=[{"role": "user", "content": "a"}]
            )
            text = chat.choices[0].message.content or ""
        assert text == "model=default max_tokens=1024 a"
    records = await gw.usage(count=2)
    assert [(r.upstream, r.fallbacks) for r in records] == [("cli", 1), ("cli", 1)]
    assert "hf_abcdefghijklmnop" not in gw.logs()  # stderr's secret, masked in the log
    assert "cannot load weights" in gw.logs()
    await client.close()
