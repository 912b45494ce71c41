"""Errors of the control plane package.

    NexusError
    ├── ConfigError          invalid nexus.toml, env override or admin write (message names key and fix)
    ├── StateError           Redis desired/observed state could not be read or written
    │   ├── StateUnavailable Redis is unreachable (wraps the redis-py exception with `from`)
    │   └── SnapshotBuildError  desired state that validates but cannot be built into a snapshot
    └── EmbeddedRedisError   the embedded redis-server could not be started or stopped
"""

from __future__ import annotations

__all__ = ["ConfigError", "EmbeddedRedisError", "NexusError", "SnapshotBuildError", "StateError", "StateUnavailable"]


class NexusError(Exception):
    """Base of every error Nexus raises on purpose."""


class ConfigError(NexusError):
    """Configuration is invalid; str(err) is the operator-facing message, one problem per line."""


class StateError(NexusError):
    """Shared state in Redis is missing, malformed, or a write failed."""


class StateUnavailable(StateError):
    """Redis cannot be reached right now."""


class SnapshotBuildError(StateError):
    """The desired state read from Redis cannot be built into a snapshot; nodes keep their last good one."""


class EmbeddedRedisError(NexusError):
    """The embedded redis-server did not start, answer, or stop."""
