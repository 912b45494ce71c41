"""`nexus models` lists what a running gateway serves, aliases included."""

from __future__ import annotations

import asyncio

from nexus.cli import main
from tests.router_node.conftest import backend_for


async def test_nexus_models_lists_the_gateways_models(gateways, fakes, capsys):
    fake = await fakes("gpu", ("llama3:8b",))
    gw = await gateways([backend_for(fake)], routing={"aliases": {"gpt-4": "llama3:8b"}})
    code = await asyncio.to_thread(main, ["models", "--url", gw.url])
    assert code == 0
    assert capsys.readouterr().out.split() == ["gpt-4", "llama3:8b"]
    code = await asyncio.to_thread(main, ["models", "--url", "http://127.0.0.1:9"])
    assert code == 1 and "cannot reach the gateway" in capsys.readouterr().err
