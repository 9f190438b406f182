"""gatewayd_llm.credentials: current and alternate secrets, a rotation's grace (on a clock the
test moves), one object per process through services.stores.shared."""

from __future__ import annotations

from gatewayd_llm.credentials import SHARED_NAME, Credentials, credentials

from gatewayd.testing import HarnessServices


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_current_and_remove() -> None:
    creds = Credentials()
    assert creds.current("p") is None and creds.secrets("p") == ()
    creds.set("p", "old-secret")
    assert creds.current("p") == "old-secret" and creds.names() == ["p"]
    creds.remove("p")
    assert creds.current("p") is None and creds.alternate("p", "old-secret") is None
    creds.remove("p")  # twice is fine


def test_grace_both_directions_then_expiry() -> None:
    clock = Clock()
    creds = Credentials(clock)
    creds.set("p", "old-secret")
    creds.set("p", "new-secret", grace=300.0)
    assert creds.current("p") == "new-secret"
    assert creds.alternate("p", "new-secret") == "old-secret"
    assert creds.alternate("p", "old-secret") == "new-secret"
    assert creds.alternate("p", "stranger") is None
    assert creds.alternate("p", None) is None
    assert creds.secrets("p") == ("new-secret", "old-secret")
    clock.now += 299.9
    assert creds.alternate("p", "new-secret") == "old-secret"
    clock.now += 0.1
    assert creds.alternate("p", "new-secret") is None
    assert creds.secrets("p") == ("new-secret",)


def test_no_grace_means_no_alternate_and_resetting_keeps_grace() -> None:
    clock = Clock()
    creds = Credentials(clock)
    creds.set("p", "a-secret")
    creds.set("p", "b-secret")
    assert creds.alternate("p", "b-secret") is None
    creds.set("p", "c-secret", grace=60.0)
    creds.set("p", "c-secret", grace=0.0)  # the same secret again: nothing changes
    assert creds.alternate("p", "c-secret") == "b-secret"


def test_repr_shows_names_not_secrets() -> None:
    creds = Credentials()
    creds.set("openai-2", "sk-very-secret-value")
    assert "sk-very" not in repr(creds) and "openai-2" in repr(creds)


def test_empty_secret_refused() -> None:
    creds = Credentials()
    try:
        creds.set("p", "")
    except ValueError as exc:
        assert "'p'" in str(exc)
    else:
        raise AssertionError("an empty secret was accepted")


async def test_one_object_per_process_through_shared_stores() -> None:
    services = HarnessServices()
    try:
        a = credentials(services)  # type: ignore[arg-type]
        b = services.stores.shared(SHARED_NAME, Credentials)
        assert a is b
        a.set("p", "s3cret-value")
        assert b.current("p") == "s3cret-value"
    finally:
        await services.close()
