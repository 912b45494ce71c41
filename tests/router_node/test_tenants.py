"""TenantBook: the verified-key memory stays exact across revocation, rotation and secret changes, and never
holds a key that did not verify."""

from __future__ import annotations

import hashlib

import pytest

from nexus.core.tenancy import KeyConfig, hash_key
from nexus.router_node import tenants as tenants_mod
from nexus.router_node.tenants import TenantBook

SECRET = b"k" * 32
MANAGED = "nx-managed-0123456789abcdef0123456789abcdef"
STATIC = "static-client-key-0123456789"


def _book(*keys: KeyConfig) -> TenantBook:
    book = TenantBook([], lambda: 1_000.0)
    book.secret = SECRET
    book.rebuild(keys, [])
    return book


def _managed(key_id: str = "key_000000000001", secret: bytes = SECRET, key: str = MANAGED) -> KeyConfig:
    return KeyConfig(id=key_id, name="app", digest=hash_key(secret, key))


def _static() -> KeyConfig:
    return KeyConfig(id="key_000000000002", name="cfg", digest="sha256:" + hashlib.sha256(STATIC.encode()).hexdigest())


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every key the book hashes (its slow path)."""
    seen: list[bytes] = []
    real = TenantBook._lookup

    def counted(self: TenantBook, key: bytes):
        seen.append(key)
        return real(self, key)

    monkeypatch.setattr(TenantBook, "_lookup", counted)
    return seen


@pytest.mark.parametrize("key", [MANAGED, STATIC], ids=["managed", "static"])
def test_a_verified_key_is_hashed_once(hashes: list[bytes], key: str) -> None:
    book = _book(_managed(), _static())
    found = [book.find(key.encode()) for _ in range(50)]
    assert found[0] is not None and all(t is found[0] for t in found)
    assert hashes == [key.encode()]


def test_an_unknown_key_is_hashed_every_time_and_never_remembered(hashes: list[bytes]) -> None:
    book = _book(_managed())
    for _ in range(5):
        assert book.find(b"nx-not-a-key") is None
    assert len(hashes) == 5
    assert b"nx-not-a-key" not in book._verified


def test_a_rebuild_forgets_so_a_revoked_key_is_unknown_at_once() -> None:
    book = _book(_managed(), _static())
    assert book.find(MANAGED.encode()) is not None and book.find(STATIC.encode()) is not None
    book.rebuild([_static()], [])  # the managed key was deleted
    assert book.find(MANAGED.encode()) is None
    assert book.find(STATIC.encode()) is not None


def test_a_changed_secret_forgets_the_keys_hashed_under_the_old_one() -> None:
    book = _book(_managed())
    assert book.find(MANAGED.encode()) is not None
    book.secret = b"other-secret-0123456789abcdef012"
    assert book.find(MANAGED.encode()) is None  # its stored digest was made under the old secret


def test_setting_the_same_secret_keeps_the_memory(hashes: list[bytes]) -> None:
    book = _book(_managed())
    book.find(MANAGED.encode())
    book.secret = bytes(SECRET)  # what every heartbeat does
    book.find(MANAGED.encode())
    assert len(hashes) == 1


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tenants_mod, "MAX_VERIFIED", 8)
    keys = [f"nx-key-{i:04d}-0123456789abcdef" for i in range(20)]
    book = _book(*(_managed(f"key_{i:012d}", key=k) for i, k in enumerate(keys)))
    for k in keys:
        assert book.find(k.encode()) is not None
        assert len(book._verified) <= 8


def test_a_remembered_key_still_expires_by_the_clock() -> None:
    now = [1_000.0]
    book = TenantBook([], lambda: now[0])
    book.secret = SECRET
    book.rebuild([KeyConfig(id="key_000000000003", name="x", digest=hash_key(SECRET, MANAGED), expires_at=1_500.0)],
                 [])
    tenant = book.find(MANAGED.encode())
    assert tenant is not None and tenant.usable(now[0]) is None
    now[0] = 1_600.0
    assert book.find(MANAGED.encode()).usable(now[0]) == "this API key has expired"
