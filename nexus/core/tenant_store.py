"""Tenancy state in Redis besides the desired config: the key-hash secret, and what a tenant used.

The secret managed keys are hashed under (HMAC-SHA256, `nexus.core.tenancy.hash_key`) comes from the variable
`[server] key_hash_secret_env` names; without one, the first process that needs it generates 32 random bytes and
stores them at `{config}:key_hash_secret` (SET NX: every process of the cluster reads the same), and every
process keeps the value it read and puts it back if Redis lost it (a key created before must stay verifiable).
With the generated secret, whoever can read Redis can check a guessed key against a digest; keys are 256 random
bits, so guessing is hopeless, but an operator who wants digests useless without the process environment sets
`key_hash_secret_env` (docs/tenancy.md).
"""

from __future__ import annotations

import secrets

from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.config import NexusSettings, resolve_secret
from nexus.core.errors import ConfigError
from nexus.core.observed import guard

__all__ = ["MIN_SECRET_BYTES", "load_hash_secret"]

MIN_SECRET_BYTES = 16


async def load_hash_secret(redis: Redis, settings: NexusSettings, held: bytes | None = None) -> bytes:
    """The key-hash secret (see the module docstring); `held` is the value this process read before."""
    env = settings.server.key_hash_secret_env
    if env:
        value = resolve_secret(env)
        if value is None or len(value.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"server.key_hash_secret_env: variable {env} must hold at least {MIN_SECRET_BYTES} bytes; "
                "export a random value, e.g. $(python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        return value.encode()
    with guard("reading the key-hash secret"):
        await redis.set(keys.CONFIG_KEY_HASH_SECRET, held or secrets.token_hex(32).encode(), nx=True)
        stored = await redis.get(keys.CONFIG_KEY_HASH_SECRET)
    if stored is None:  # deleted in between: try once more next time
        raise ConfigError("the key-hash secret vanished from Redis while it was read; retry")
    return stored if isinstance(stored, bytes) else stored.encode()
