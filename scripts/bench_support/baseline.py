"""``--baseline REV``: the gatewayd of another commit, installed beside this one for one run.

REV is checked out in a temporary git worktree (``git worktree add --detach``) and installed
into a venv of its own (``python -m venv`` with the same interpreter as ``--python``, then
``pip install -e``), pinned to the dependency versions of this project's venv where REV's ranges
allow it, so the two rows differ only in gatewayd's own code. Both are removed at the end unless
``--keep-tmp``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .procs import Children


class BaselineError(RuntimeError):
    """The baseline could not be checked out or installed."""


@dataclass(frozen=True)
class Baseline:
    rev: str
    commit: str
    worktree: Path
    venv: Path
    pinned: bool  # installed with this venv's dependency versions as constraints
    differs: dict[str, tuple[str, str]] = field(default_factory=dict)  # name: (ours, base's)

    @property
    def gatewayd(self) -> Path:
        return self.venv / "bin/gatewayd"

    @property
    def python(self) -> Path:
        return self.venv / "bin/python"

    def describe(self) -> dict[str, object]:
        """What the JSON's ``meta.baseline`` says."""
        return {
            "rev": self.rev,
            "commit": self.commit,
            "dependencies_pinned_to_ours": self.pinned,
            "dependencies_that_differ": {
                name: {"ours": ours, "base": base} for name, (ours, base) in self.differs.items()
            },
        }


def git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise BaselineError(f"git {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


def resolve(root: Path, rev: str) -> str:
    """REV's full commit id, or BaselineError if git does not know it."""
    try:
        return git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except BaselineError:
        raise BaselineError(f"--baseline {rev}: not a commit in {root}") from None


def describe_tree(root: Path) -> str:
    """The commit the current rows run, and whether the working tree has changes on top."""
    try:
        return git(root, "describe", "--always", "--dirty", "--abbrev=12")
    except (BaselineError, OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({err})"


def _freeze(children: Children, python: str | Path) -> dict[str, str]:
    """name (lower case) -> version of what a venv has installed, editable installs left out."""
    out = children.run(
        [str(python), "-m", "pip", "freeze", "--exclude-editable"], core=None, timeout=120
    )
    pins = {}
    for line in out.splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not name.startswith("#"):
            pins[name.lower().replace("_", "-")] = version
    return pins


@contextmanager
def prepare(
    root: Path, rev: str, tmp: Path, children: Children, python: str, *, keep: bool
) -> Iterator[Baseline]:
    """Check REV out in ``tmp/baseline-src``, install it into ``tmp/baseline-venv``, yield it;
    remove both afterwards unless ``keep``."""
    commit = resolve(root, rev)
    worktree, venv = tmp / "baseline-src", tmp / "baseline-venv"
    try:  # (an interrupted ``worktree add`` is cleaned up too)
        try:
            children.run(
                ["git", "-C", str(root), "worktree", "add", "--detach", str(worktree), commit],
                core=None,
                timeout=120,
            )
        except RuntimeError as err:
            raise BaselineError(f"git worktree add {rev}: {err}") from None
        yield _install(children, python, worktree, venv, rev, commit)
    finally:
        if not keep:
            remove(root, worktree)
            shutil.rmtree(venv, ignore_errors=True)


def _install(
    children: Children, python: str, worktree: Path, venv: Path, rev: str, commit: str
) -> Baseline:
    try:
        children.run([python, "-m", "venv", str(venv)], core=None, timeout=300)
    except RuntimeError as err:
        raise BaselineError(f"python -m venv {venv}: {err}") from None
    ours = _freeze(children, python)
    constraints = venv / "constraints-from-ours.txt"
    constraints.write_text("".join(f"{k}=={v}\n" for k, v in sorted(ours.items())))
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "-e", str(worktree)]
    pinned = True
    try:
        children.run([*pip, "-c", str(constraints)], core=None, timeout=900)
    except RuntimeError:  # REV's version ranges exclude one of ours: take what pip resolves
        pinned = False
        try:
            children.run(pip, core=None, timeout=900)
        except RuntimeError as err:
            raise BaselineError(f"pip install -e {worktree}: {_tail(str(err))}") from None
    base = _freeze(children, venv / "bin/python")
    differs = {
        name: (ours.get(name, "-"), version)
        for name, version in base.items()
        if ours.get(name) != version
    }
    return Baseline(rev, commit, worktree, venv, pinned, differs)


def remove(root: Path, worktree: Path) -> None:
    """``git worktree remove --force``; if git cannot, delete the files and prune the entry."""
    done = subprocess.run(
        ["git", "-C", str(root), "worktree", "remove", "--force", str(worktree)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        shutil.rmtree(worktree, ignore_errors=True)
        subprocess.run(
            ["git", "-C", str(root), "worktree", "prune"],
            capture_output=True,
            timeout=120,
            check=False,
        )


def _tail(text: str, lines: int = 15) -> str:
    return "\n  | ".join(["", *text.strip().splitlines()[-lines:]])
