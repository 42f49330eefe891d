"""twitchio's exceptions mapped to ours at the boundary, without URLs or secrets."""

from __future__ import annotations

import aiohttp

from familiar_connect.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimited,
    ProviderRefused,
    ProviderTimeout,
    ProviderUnavailable,
)
from familiar_connect.platforms.twitch.client import provider_error, twitchio_error


def http_exception(status: int, message: str = "") -> BaseException:
    from twitchio.exceptions import HTTPException
    from twitchio.http import Route

    route = Route(
        "POST",
        "oauth2/token",
        use_id=True,
        params={"client_secret": "very-secret-value-123", "grant_type": "refresh_token"},
    )
    return HTTPException("failed", route=route, status=status, extra={"message": message})


class TestProviderError:
    def test_statuses_map_to_our_classes(self) -> None:
        """Each HTTP status becomes the most specific of our provider errors."""
        expected = {
            400: ProviderBadRequest,
            401: ProviderAuthError,
            403: ProviderRefused,
            429: ProviderRateLimited,
            503: ProviderUnavailable,
            418: ProviderError,
        }
        for status, cls in expected.items():
            error = provider_error(http_exception(status), what="doing it")  # type: ignore[arg-type]
            assert type(error) is cls and error.status == status

    def test_message_is_twitchs_not_the_url(self) -> None:
        """The message quotes Twitch's short message and never the request URL or its secret."""
        error = provider_error(http_exception(400, "Invalid refresh token"), what="refreshing")  # type: ignore[arg-type]
        assert "Invalid refresh token" in str(error)
        assert "very-secret-value-123" not in str(error) and "oauth2" not in str(error)


class TestTwitchioError:
    def test_connection_failures_and_timeouts(self) -> None:
        """Network failures are connection errors; timeouts are timeouts; ours pass through."""
        assert isinstance(twitchio_error(aiohttp.ClientConnectionError()), ProviderConnectionError)
        assert isinstance(twitchio_error(OSError("refused")), ProviderConnectionError)
        assert isinstance(twitchio_error(TimeoutError()), ProviderTimeout)
        ours = ProviderAuthError("no", provider="twitch", status=401)
        assert twitchio_error(ours) is ours
        assert type(twitchio_error(RuntimeError("x"))) is ProviderError
