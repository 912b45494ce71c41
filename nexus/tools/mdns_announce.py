"""Announce one service over mDNS until stopped: `nexus mdns-announce` (tests, demos of discovery).

It registers `<name>.<service type>` with python-zeroconf on the given interface address only (never every
interface), with the given TXT records (`type=ollama`, `api_path=/v1`, ...), and unregisters (a goodbye
packet) on SIGTERM; a SIGKILL leaves the records in others' caches until their TTL, as a crash does.
"""

from __future__ import annotations

import argparse
import asyncio
import socket

from nexus.core.shutdown import stop_on_signals

__all__ = ["add_arguments", "run_forever"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service-type", default="_ollama._tcp.local.")
    parser.add_argument("--name", required=True, help="instance name, e.g. gpu-box")
    parser.add_argument("--address", required=True, help="IPv4 address to announce and multicast on")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--txt", action="append", default=[], metavar="KEY=VALUE")


def run_forever(ns: argparse.Namespace) -> None:
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    props = dict(item.split("=", 1) for item in ns.txt)

    async def main() -> None:
        stop = stop_on_signals()
        zc = AsyncZeroconf(interfaces=[ns.address], ip_version=IPVersion.V4Only)
        info = AsyncServiceInfo(ns.service_type, f"{ns.name}.{ns.service_type}", port=ns.port,
                                addresses=[socket.inet_aton(ns.address)], properties=props)
        await zc.async_register_service(info)
        print(f"announcing {info.name} at {ns.address}:{ns.port}", flush=True)
        try:
            await stop.wait()
        finally:
            await zc.async_unregister_service(info)
            await zc.async_close()

    asyncio.run(main())
