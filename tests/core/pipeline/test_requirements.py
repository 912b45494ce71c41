"""nexus.core.pipeline.requirements and the budget's cost estimate: exact figures for written-out bodies."""

from __future__ import annotations

from typing import Any

import pytest

from nexus.core.pipeline import RoutingIntent
from nexus.core.pipeline.budget import DEFAULT_OUTPUT_TOKENS, estimate_cost
from nexus.core.pipeline.intent import Requirements
from nexus.core.pipeline.requirements import IMAGE_TOKENS, estimate_text_tokens, extract_requirements
from tests.core.pipeline.helpers import backend, snapshot


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)])
def test_text_tokens_round_up_at_four_characters(text: str, tokens: int) -> None:
    assert estimate_text_tokens(text) == tokens


def test_tokens_count_every_message_part_and_framing() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "abcdefgh"},  # 2 + 4 framing
            {"role": "user", "content": [
                "not a part",  # ignored, counting goes on
                {"type": "text", "text": "abcd"},  # 1
                {"type": "image_url", "image_url": {"url": "data:,"}},  # an image
                {"type": "text", "text": 7},  # not text: nothing
                {"type": "input_image"},  # another image
                {"type": "text", "text": "abcdefghi"},  # 3
            ]},  # + 4 framing
            "not a message",
            {"role": "assistant"},  # no content: framing only
        ]
    }
    req = extract_requirements(body)
    assert req == Requirements(vision=True, tools=False, json_mode=False,
                               input_tokens=2 + 4 + 1 + 2 * IMAGE_TOKENS + 3 + 4 + 4, max_output_tokens=None)


def test_a_conversation_without_images_needs_no_vision() -> None:
    req = extract_requirements({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    assert (req.vision, req.input_tokens) == (False, 1 + 4)


@pytest.mark.parametrize(
    ("extra", "field", "value"),
    [
        pytest.param({"tools": [{"type": "function"}]}, "tools", True, id="tools"),
        pytest.param({"functions": [{"name": "f"}]}, "tools", True, id="legacy-functions"),
        pytest.param({"tools": []}, "tools", False, id="empty-tools"),
        pytest.param({"response_format": {"type": "json_object"}}, "json_mode", True, id="json-object"),
        pytest.param({"response_format": {"type": "json_schema", "json_schema": {}}}, "json_mode", True,
                     id="json-schema"),
        pytest.param({"response_format": {"type": "text"}}, "json_mode", False, id="text-format"),
        pytest.param({"max_completion_tokens": 7, "max_tokens": 9}, "max_output_tokens", 7, id="completion-wins"),
        pytest.param({"max_tokens": 9}, "max_output_tokens", 9, id="max-tokens"),
        pytest.param({"max_tokens": 0}, "max_output_tokens", 0, id="zero-is-a-limit"),
        pytest.param({"max_tokens": -1}, "max_output_tokens", None, id="negative-ignored"),
        pytest.param({"max_tokens": True}, "max_output_tokens", None, id="bool-ignored"),
    ],
)
def test_request_features(extra: dict[str, Any], field: str, value: Any) -> None:
    req = extract_requirements({"messages": [{"role": "user", "content": "hi"}], **extra})
    assert getattr(req, field) == value


def _cost(req: Requirements, prices: tuple[float, float] | None) -> float:
    models = [{"name": "m", "input_usd_per_1m": prices[0], "output_usd_per_1m": prices[1]}] if prices else ["m"]
    snap = snapshot([backend("c", "openai", models=models)])
    return estimate_cost(RoutingIntent("m", req), snap, "c")


@pytest.mark.parametrize(
    ("prices", "max_out", "usd"),
    [
        pytest.param((2.0, 8.0), 100, (1000 * 2.0 + 100 * 8.0) / 1e6, id="input-and-output"),
        pytest.param((2.0, 8.0), None, (1000 * 2.0 + DEFAULT_OUTPUT_TOKENS * 8.0) / 1e6, id="default-output"),
        pytest.param((0.0, 8.0), 100, 100 * 8.0 / 1e6, id="free-input"),
        pytest.param((2.0, 0.0), 100, 1000 * 2.0 / 1e6, id="free-output"),
        pytest.param((0.0, 0.0), 100, 0.0, id="free"),
    ],
)
def test_cost_estimate(prices: tuple[float, float], max_out: int | None, usd: float) -> None:
    req = Requirements(input_tokens=1000, max_output_tokens=max_out)
    assert _cost(req, prices) == pytest.approx(usd, rel=1e-12)


def test_cost_of_an_unpriced_backend_or_model_is_zero() -> None:
    snap = snapshot([backend("local", "vllm")])
    assert estimate_cost(RoutingIntent("m", Requirements(input_tokens=10**6)), snap, "local") == 0.0
    assert estimate_cost(RoutingIntent("m", Requirements(input_tokens=10**6)), snap, "nobody") == 0.0
