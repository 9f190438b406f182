#!/usr/bin/env python3
"""A command-line "model" for the tests of ``kind: process`` (stdlib only: it also runs inside
bubblewrap with nothing but the interpreter bound).

    fake_model_cli.py --model M [--max-tokens N] [--mode MODE] [--delay S] [--pidfile P]
                      [--bytes N] [--env NAME] [--marker X] [--silent]

It reads its whole stdin (the prompt) first, then, by ``--mode``:

- ``words`` (default): ``model=M max_tokens=N`` and the words of the prompt's last non-empty
  line before ``assistant:``, one word per write, ``--delay`` seconds apart;
- ``cat``: the prompt, as read, in one write;
- ``utf8``: ``héllo wörld 🙂 ✓`` one byte per write (characters split across reads);
- ``fail``: a secret-looking line on stderr, nothing on stdout, exit 3;
- ``fail-after``: two words, then exit 4;
- ``hang``: nothing, forever; ``hang-after``: one word, then nothing, forever;
- ``ignore-term``: like ``hang`` but ignoring SIGTERM;
- ``grandchild``: starts a grandchild (a sleeping python with ``--marker`` in its argv),
  writes "<its pid> <own pid>" to ``--pidfile`` (if given), then a word every ``--delay``
  seconds (none with ``--silent``), forever;
- ``flood``: ``--bytes`` bytes of ``x`` as fast as it can;
- ``env``: the value of ``--env NAME`` (or ``<unset>``);
- ``memory``: allocates 512 MiB (fails under ``memory:``);
- ``spin``: burns CPU forever (killed under ``cpu_seconds:``);
- ``net``: ``net=ok`` if it can connect to 127.0.0.1:``--port``, else ``net=none`` (the
  sandbox has a network namespace of its own: the host's listeners are not there);
- ``ls``: whether the (comma-separated) ``--paths`` exist.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def out(data: str | bytes) -> None:
    sys.stdout.buffer.write(data.encode() if isinstance(data, str) else data)
    sys.stdout.buffer.flush()


def last_line(prompt: str) -> str:
    lines = [line for line in prompt.splitlines() if line.strip() and line != "assistant:"]
    if not lines:
        return ""
    line = lines[-1]
    return line.split(": ", 1)[1] if ": " in line else line


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="")
    p.add_argument("--max-tokens", default="")
    p.add_argument("--mode", default="words")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--pidfile", default="")
    p.add_argument("--bytes", type=int, default=1 << 20)
    p.add_argument("--env", default="")
    p.add_argument("--marker", default="")
    p.add_argument("--port", type=int, default=9)
    p.add_argument("--paths", default="/etc/passwd")
    p.add_argument("--silent", action="store_true")
    a, _ = p.parse_known_args()
    prompt = sys.stdin.buffer.read().decode()  # to EOF: the kind must close stdin
    mode = a.mode
    if mode == "words":
        words = [f"model={a.model}", f"max_tokens={a.max_tokens}", *last_line(prompt).split()]
        for i, word in enumerate(words):
            out(("" if i == 0 else " ") + word)
            time.sleep(a.delay)
    elif mode == "cat":
        out(prompt)
    elif mode == "utf8":
        for byte in "héllo wörld 🙂 ✓".encode():
            out(bytes([byte]))
            time.sleep(a.delay)
    elif mode == "fail":
        sys.stderr.write("fatal: cannot load weights (token=hf_abcdefghijklmnop secret)\n")
        return 3
    elif mode == "fail-after":
        out("partial answer")
        time.sleep(a.delay)
        return 4
    elif mode in ("hang", "hang-after", "ignore-term"):
        if mode == "ignore-term":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if mode == "hang-after":
            out("thinking")
        while True:
            time.sleep(60)
    elif mode == "grandchild":
        sleeper = "import time; time.sleep(120)"
        child = subprocess.Popen([sys.executable, "-c", sleeper, a.marker])
        if a.pidfile:
            with open(a.pidfile + ".tmp", "w") as f:
                f.write(f"{child.pid} {os.getpid()}")
            os.replace(a.pidfile + ".tmp", a.pidfile)
        while True:
            if not a.silent:
                out("tick ")
            time.sleep(a.delay or 0.05)
    elif mode == "flood":
        left = a.bytes
        while left > 0:
            n = min(left, 65536)
            out(b"x" * n)
            left -= n
    elif mode == "env":
        out(os.environ.get(a.env, "<unset>"))
    elif mode == "memory":
        block = bytearray(512 * 1024 * 1024)
        out(f"allocated {len(block)}")
    elif mode == "spin":
        while True:
            pass
    elif mode == "net":
        try:
            with socket.create_connection(("127.0.0.1", a.port), timeout=1):
                out("net=ok")
        except OSError:
            out("net=none")
    elif mode == "ls":
        out(" ".join(f"{p}={os.path.exists(p)}" for p in a.paths.split(",")))
    else:
        sys.stderr.write(f"unknown mode {mode}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
