"""Who is calling: the one authentication of every inbound protocol, and this node's tenant table.

`authenticate(book, headers)` takes the node's `TenantBook` and a request's headers (ASGI: a list of (name,
value) byte pairs, names lower-case) and returns the caller's `Tenant` (key id, team, limits), None when the
gateway needs no keys, or raises `Unauthorized` (401). A key is read from `Authorization: Bearer <key>`
(OpenAI SDKs; the Anthropic SDK given an auth token) or `x-api-key: <key>` (the Anthropic SDK given an API
key); both may be sent, and then must agree. Every protocol handler (OpenAI, Anthropic, ...) calls it first
and passes the tenant on; nothing else reads key headers.

Lookup is two hashes (HMAC-SHA256 under the key-hash secret for managed keys, SHA-256 for keys declared in
nexus.toml and `[server] api_keys`) and one dict read; revocation, expiry and a rotation's grace are checked
against the node's clock on every request, and a revoked or deleted key is gone from the table with the
snapshot that carries the change (`TenantBook.rebuild`, on every snapshot).

A key that verified is remembered in this process's memory (`TenantBook.find`: presented bytes -> tenant, at
most `MAX_VERIFIED` keys), so a busy key pays its hashes once per table, not once per request: in the gateway
the two hashes measured 15-25 us per request (OpenSSL's per-call setup, cold between requests; 2.6 us in a
tight loop), the largest part of what a key added (docs/tenancy.md#cost-of-a-key). The memory is dropped
whole on every table rebuild and secret change, and only keys that verified enter it, so a flood of invalid
keys neither fills it nor skips a hash. A key is never logged, and never written anywhere (Redis, logs,
exports).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable, Sequence

from nexus.core.gateway_errors import Unauthorized
from nexus.core.tenancy import KeyConfig, TeamConfig, Tenant, TenantTable, build_tenants

__all__ = ["MAX_KEY_BYTES", "MAX_VERIFIED", "TenantBook", "authenticate", "presented_key"]

log = logging.getLogger("nexus.router")
MAX_KEY_BYTES = 512
MAX_VERIFIED = 4096  # verified keys remembered per process; past it the memory starts afresh


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The client key of a request: `Authorization: Bearer` or `x-api-key` (identical when both are sent)."""
    bearer = api_key = None
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            bearer = value[7:].strip()
        elif name == b"x-api-key":
            api_key = value.strip()
    if bearer and api_key and not hmac.compare_digest(bearer, api_key):
        raise Unauthorized("Authorization and x-api-key carry different keys; send one key")
    key = bearer or api_key
    if key is not None and len(key) > MAX_KEY_BYTES:
        raise Unauthorized("invalid API key")
    return key or None


class TenantBook:
    """This node's tenant table, rebuilt with every snapshot, and the key-hash secret it verifies keys with."""

    __slots__ = ("_hmac", "_secret", "_verified", "clock", "static", "table")

    def __init__(self, static_digests: Sequence[str], clock: Callable[[], float]) -> None:
        self.static = tuple(static_digests)
        self.clock = clock
        self._secret: bytes | None = None
        self._hmac: hmac.HMAC | None = None
        self._verified: dict[bytes, Tenant] = {}
        self.table: TenantTable = build_tenants((), (), self.static)

    @property
    def secret(self) -> bytes | None:
        return self._secret

    @secret.setter
    def secret(self, value: bytes | None) -> None:
        if value == self._secret:  # the heartbeat sets it every beat
            return
        self._secret = value
        # keyed once; each request copies it (half the cost of a new HMAC per request)
        self._hmac = hmac.new(value, digestmod=hashlib.sha256) if value is not None else None
        self._verified = {}  # a managed key's digest depends on the secret

    def rebuild(self, keys: Iterable[KeyConfig], teams: Iterable[TeamConfig]) -> None:
        self.table = build_tenants(keys, teams, self.static)
        self._verified = {}  # a key revoked, rotated or changed must be looked up afresh

    def find(self, key: bytes) -> Tenant | None:
        # A dict of the presented bytes: its lookup hashes them with the interpreter's per-process random
        # SipHash key and compares bytes only on a hash match, so its timing tells a client nothing of a key.
        tenant = self._verified.get(key)
        if tenant is not None:
            return tenant
        tenant = self._lookup(key)
        if tenant is not None:
            if len(self._verified) >= MAX_VERIFIED:
                self._verified = {}
            self._verified[key] = tenant
        return tenant

    def _lookup(self, key: bytes) -> Tenant | None:
        by_digest = self.table.by_digest
        if self._hmac is not None:  # managed keys first
            mac = self._hmac.copy()
            mac.update(key)
            tenant = by_digest.get("hmac-sha256:" + mac.hexdigest())
            if tenant is not None:
                return tenant
        return by_digest.get("sha256:" + hashlib.sha256(key).hexdigest())

    def team_of(self, key_id: str | None) -> str | None:
        tenant = self.table.by_id.get(key_id) if key_id else None
        return tenant.team if tenant is not None else None


def authenticate(book: TenantBook, headers: Iterable[tuple[bytes, bytes]]) -> Tenant | None:
    """The caller's tenant; None when no client keys exist; `Unauthorized` for a missing or unusable key."""
    key = presented_key(headers)
    if not book.table.required:
        return None
    if key is None:
        raise Unauthorized("missing API key; send Authorization: Bearer <key> (or x-api-key: <key>)")
    tenant = book.find(key)
    if tenant is None:
        raise Unauthorized("invalid API key")
    why = tenant.usable(book.clock())
    if why is not None:
        raise Unauthorized(why)
    return tenant
