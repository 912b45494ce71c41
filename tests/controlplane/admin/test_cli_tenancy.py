"""`nexus keys ...` and `nexus teams ...` as an operator runs them: the real CLI in a subprocess against a
running admin API, tables and `--json`, and the exit codes scripts rely on (docs/tenancy.md)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from tests.controlplane.admin.conftest import SEED_KEY, SEED_TEAM, TOKEN


async def _nexus(admin, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    cmd = [sys.executable, "-m", "nexus.cli", *args, "--admin-url", admin.url, "--token", TOKEN]
    return await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, env=env, timeout=60)


async def test_keys_create_list_show_rotate_revoke(admin) -> None:
    made = await _nexus(admin, "keys", "create", "--name", "indexer", "--team", SEED_TEAM, "--rpm", "60",
                        "--models", "m,gpt-*", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["key"].startswith("nx-") and key["rpm"] == 60 and key["models"] == ["m", "gpt-*"]

    listed = await _nexus(admin, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert key["id"] in listed.stdout and "indexer" in listed.stdout and SEED_KEY in listed.stdout
    assert key["key"] not in listed.stdout  # the secret is shown once, at creation

    updated = await _nexus(admin, "keys", "update", key["id"], "--rpm", "120", "--json")
    assert updated.returncode == 0 and json.loads(updated.stdout)["rpm"] == 120

    rotated = await _nexus(admin, "keys", "rotate", key["id"], "--grace-seconds", "60")
    assert rotated.returncode == 0, rotated.stderr
    new_secret = rotated.stdout.strip().splitlines()[-1]
    assert new_secret.startswith("nx-") and new_secret != key["key"]

    revoked = await _nexus(admin, "keys", "revoke", key["id"], "--json")
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["status"] == "revoked"
    shown = await _nexus(admin, "keys", "show", key["id"], "--json")
    assert json.loads(shown.stdout)["status"] == "revoked"


async def test_teams_put_show_delete(admin) -> None:
    put = await _nexus(admin, "teams", "put", "search", "--tpm", "5000", "--budget", "2.5")
    assert put.returncode == 0 and "team search saved" in put.stdout, put.stderr
    shown = await _nexus(admin, "teams", "show", "search", "--json")
    team = json.loads(shown.stdout)
    assert team["tpm"] == 5000 and team["budget"]["monthly_limit_usd"] == 2.5
    gone = await _nexus(admin, "teams", "delete", "search")
    assert gone.returncode == 0, gone.stderr
    assert (await _nexus(admin, "teams", "show", "search")).returncode == 4


async def test_exit_codes_for_scripts(admin) -> None:
    missing = await _nexus(admin, "keys", "show", "key_0123456789ab")
    assert missing.returncode == 4 and "404" in missing.stderr
    invalid = await _nexus(admin, "keys", "create", "--name", "x", "--max-tier", "9")
    assert invalid.returncode == 2 and "max_tier" in invalid.stderr
    env_free = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    denied = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "nexus.cli", "keys", "list", "--admin-url", admin.url, "--token", "no"],
        capture_output=True, text=True, env=env_free, timeout=60)
    assert denied.returncode == 3
