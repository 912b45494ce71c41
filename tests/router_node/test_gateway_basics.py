import openai
import pytest

from tests.router_node.conftest import backend_for

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}


async def test_sdk_chat_stream_and_embeddings(fakes, gateways):
    local = await fakes("local", ("m", "embed"), stream_chunks=7)
    gw = await gateways([backend_for(local)])
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    try:
        raw = await client.chat.completions.with_raw_response.create(**CHAT)
        completion = raw.parse()
        assert raw.headers["x-nexus-backend"] == "local"
        assert raw.headers["x-nexus-backend-type"] == "local"
        assert raw.headers["x-nexus-privacy-zone"] == "restricted"
        assert completion.choices[0].message.content
        stream = await client.chat.completions.create(**CHAT, stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert len(pieces) >= 7
        assert "".join(pieces) == completion.choices[0].message.content
        emb = await client.embeddings.create(model="embed", input=["a", "b"])
        assert len(emb.data) == 2
        models = await client.models.list()
        assert {m.id for m in models.data} == {"m", "embed"}
    finally:
        await client.close()


async def test_unknown_model_is_404_with_available_models(fakes, gateways):
    gw = await gateways([backend_for(await fakes("local"))])
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    try:
        with pytest.raises(openai.NotFoundError) as err:
            await client.chat.completions.create(model="nope", messages=CHAT["messages"])
        assert err.value.body["code"] == "model_not_found"
        assert "available models: m" in err.value.body["message"]
    finally:
        await client.close()
