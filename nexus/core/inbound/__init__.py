"""Inbound protocols: what clients speak, translated to and from the gateway's one pipeline.

The gateway routes, bills and proxies OpenAI chat completions. Each inbound protocol is a thin front end:
its request becomes a chat completions body (routed by the same pipeline, with the same requirements,
policies, budgets and telemetry), and the chat answer, JSON or stream, goes back in the protocol's own
shape, errors in its own envelope:

    anthropic_messages  POST /v1/messages (+ count_tokens)   Anthropic Messages, SSE with `event:` lines
    responses           POST /v1/responses                   OpenAI Responses (stateless), SSE events
    ollama              /api/chat /api/generate /api/embed   Ollama's native API, NDJSON streams

Invariants: pure (no I/O, no clock: ids and times come in as arguments); a request that cannot be
expressed raises `nexus.core.gateway_errors.BadRequest` naming the field; a stream translator's output
depends only on the chat events fed, never on how they were split into chunks.
"""
