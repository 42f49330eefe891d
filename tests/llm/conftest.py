"""Fixtures for LLM tests: a fresh fake OpenRouter and clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from familiar_connect.llm.openrouter import OpenRouterClient
from tests.fakes.openrouter import FakeOpenRouter

TEST_API_KEY = "sk-or-v1-test-canary-0123456789"

ClientFactory = Callable[..., OpenRouterClient]


@pytest.fixture(name="fake_openrouter")
async def fixture_fake_openrouter() -> AsyncIterator[FakeOpenRouter]:
    async with FakeOpenRouter() as fake:
        yield fake


@pytest.fixture(name="make_client")
async def fixture_make_client(
    fake_openrouter: FakeOpenRouter,
) -> AsyncIterator[ClientFactory]:
    """Build clients aimed at the fake with tiny backoff; all closed at teardown."""
    clients: list[OpenRouterClient] = []

    def make(**overrides: Any) -> OpenRouterClient:
        options: dict[str, Any] = {
            "base_url": fake_openrouter.api_base,
            "api_key": TEST_API_KEY,
            "referer": "https://familiar.example",
            "title": "Familiar-Connect tests",
            "connect_timeout_s": 5.0,
            "read_timeout_s": 5.0,
            "max_retries": 2,
            "backoff_base_s": 0.001,
            "backoff_max_s": 0.005,
        }
        options.update(overrides)
        client = OpenRouterClient(**options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture(name="client")
def fixture_client(make_client: ClientFactory) -> OpenRouterClient:
    return make_client()
