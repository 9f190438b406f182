"""The dashboard's session store: bounded, idle and absolute expiry, random ids, login CSRF."""

from __future__ import annotations

from gatewayd.admin.dashboard.sessions import SessionStore, same


def test_sessions_are_random_bounded_and_least_recently_used_go_first() -> None:
    store = SessionStore(limit=3)
    a, b, c = (store.open("ops", "h", now=0.0) for _ in range(3))
    assert len({a.id, b.id, c.id, a.csrf, b.csrf, c.csrf}) == 6
    assert store.get(a.id, now=1.0) is a  # a is now the most recently used
    d = store.open("ops", "h", now=2.0)
    assert store.get(b.id, now=2.0) is None  # the least recently used one went
    assert {s.id for s in store.sessions.values()} == {a.id, c.id, d.id}


def test_sessions_expire_when_idle_and_after_their_lifetime() -> None:
    store = SessionStore(idle=10.0, lifetime=25.0)
    s = store.open("ops", "h", now=0.0)
    for t in (9.0, 18.0, 24.0):  # used within the idle limit each time
        assert store.get(s.id, now=t) is s
    assert store.get(s.id, now=26.0) is None  # over the lifetime, however busy
    idle = store.open("ops", "h", now=100.0)
    assert store.get(idle.id, now=110.5) is None
    assert idle.id not in store.sessions


def test_logout_closes_and_login_tokens_are_bound_to_their_cookie() -> None:
    store = SessionStore()
    s = store.open("ops", "h")
    store.close(s.id)
    assert store.get(s.id) is None
    assert same(store.login_token("n1"), store.login_token("n1"))
    assert not same(store.login_token("n1"), store.login_token("n2"))
    assert not same(store.login_token("n1"), SessionStore().login_token("n1"))  # per process
