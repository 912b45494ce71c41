"""The `nexus` command line: one entry point, one subcommand per process kind or operator task.

Subcommands import their implementation lazily so `nexus --help` stays fast and a router node never
imports the admin API's dependencies it does not run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _check_config(ns: argparse.Namespace) -> int:
    from controlplane.config import load_settings
    from controlplane.errors import ConfigError

    try:
        settings = load_settings(ns.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    desired = settings.desired()
    print(
        f"{ns.config}: ok ({len(desired.backends)} backends, {len(desired.routing.policies)} policies, "
        f"{len(desired.routing.aliases)} aliases)"
    )
    return 0


def _fake_backend(ns: argparse.Namespace) -> int:
    from router_node.fake_backend import options_from_args, run_forever

    try:
        options = options_from_args(ns)
    except (TypeError, ValueError) as exc:
        print(f"nexus fake-backend: {exc}", file=sys.stderr)
        return 2
    run_forever(options, ns.host, ns.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from router_node.fake_backend import add_arguments as add_fake_arguments

    parser = argparse.ArgumentParser(prog="nexus", description="Nexus: LLM inference routing control plane")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check-config", help="validate a nexus.toml and exit")
    check.add_argument("--config", "-c", required=True, help="path of nexus.toml")
    check.set_defaults(func=_check_config)

    fake = sub.add_parser("fake-backend", help="run the fake OpenAI-compatible backend (tests, demo, benchmarks)")
    add_fake_arguments(fake)
    fake.set_defaults(func=_fake_backend)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    return int(ns.func(ns) or 0)


if __name__ == "__main__":
    sys.exit(main())
