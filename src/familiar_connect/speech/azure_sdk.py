"""Shared plumbing for the Azure Speech SDK: configuration, endpoints, errors, blocking calls.

The SDK is native and callback-driven; these helpers keep its threads and its
error codes at the boundary so the STT and TTS providers stay thin.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import azure.cognitiveservices.speech as speechsdk

from familiar_connect.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderQuotaError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)

__all__ = [
    "PROVIDER",
    "azure_locale",
    "call_blocking",
    "cancellation_error",
    "check_endpoint",
    "make_speech_config",
    "validate_host",
]

PROVIDER = "azure"
_MAX_DETAILS_CHARS = 300
_REGION = re.compile(r"^[a-z0-9-]{2,40}$")
# Locales for a bare language code; anything else becomes "xx-XX".
_DEFAULT_LOCALES = {
    "ar": "ar-SA",
    "da": "da-DK",
    "en": "en-US",
    "es": "es-ES",
    "fr": "fr-FR",
    "hi": "hi-IN",
    "ja": "ja-JP",
    "ko": "ko-KR",
    "nb": "nb-NO",
    "no": "nb-NO",
    "pt": "pt-BR",
    "sv": "sv-SE",
    "uk": "uk-UA",
    "zh": "zh-CN",
}

T = TypeVar("T")


# -- configuration ------------------------------------------------------------------------------


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_host(host: str) -> str:
    """Check an ``AZURE_SPEECH_HOST`` value and return it without a trailing slash.

    The SDK takes ``protocol://host[:port]`` and adds the standard paths. ``wss`` is required;
    plain ``ws`` is accepted only for a loopback host (a fake).

    Raises:
        ValueError: any other scheme, a path, or plain ``ws`` to a remote host.
    """
    parts = urlsplit(host.strip())
    if parts.scheme not in {"ws", "wss"} or not parts.hostname:
        raise ValueError("must look like wss://host[:port]")
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise ValueError("must be a host only (the SDK adds the paths)")
    if parts.scheme == "ws" and not _is_loopback(parts.hostname):
        raise ValueError("plain ws:// is only allowed for a loopback host; use wss://")
    return host.strip().rstrip("/")


def azure_locale(language: str) -> str:
    """A BCP-47 locale Azure accepts: ``"en"`` → ``"en-US"``, ``"en-gb"`` → ``"en-GB"``."""
    parts = language.strip().replace("_", "-").split("-")
    primary = parts[0].lower() or "en"
    if len(parts) > 1 and parts[1]:
        region = parts[1].upper() if len(parts[1]) == 2 else parts[1].title()
        return "-".join([primary, region, *parts[2:]])
    return _DEFAULT_LOCALES.get(primary, f"{primary}-{primary.upper()}")


def make_speech_config(key: str, *, region: str | None, host: str | None) -> Any:
    """Build a ``SpeechConfig``: ``host`` when given (a fake or a container), else ``region``.

    Blocking native call; run it in :func:`call_blocking`.

    Raises:
        ValueError: neither (or an invalid one) is given.
    """
    if host:
        return speechsdk.SpeechConfig(host=validate_host(host), subscription=key)
    if region and _REGION.match(region):
        return speechsdk.SpeechConfig(subscription=key, region=region)
    raise ValueError("AZURE_SPEECH_REGION (e.g. westeurope) or AZURE_SPEECH_HOST is required")


def check_endpoint(*, region: str | None, host: str | None) -> None:
    """Validate the endpoint settings without touching the SDK.

    Raises:
        ValueError: naming what is wrong.
    """
    if host:
        validate_host(host)
    elif not region:
        raise ValueError("AZURE_SPEECH_REGION (e.g. westeurope) or AZURE_SPEECH_HOST is required")
    elif not _REGION.match(region):
        raise ValueError("AZURE_SPEECH_REGION must be a region name such as westeurope")


# -- errors -------------------------------------------------------------------------------------

_ERRORS: dict[str, tuple[type[ProviderError], int | None, str]] = {
    "AuthenticationFailure": (
        ProviderAuthError,
        401,
        "the key was refused; check AZURE_SPEECH_KEY and AZURE_SPEECH_REGION",
    ),
    "BadRequest": (ProviderBadRequest, 400, "the request was rejected"),
    "TooManyRequests": (ProviderRateLimited, 429, "too many concurrent requests"),
    "Forbidden": (ProviderQuotaError, 403, "the subscription is out of quota"),
    "ConnectionFailure": (ProviderConnectionError, None, "the connection failed"),
    "ServiceTimeout": (ProviderTimeout, None, "the service timed out"),
    "ServiceUnavailable": (ProviderUnavailable, 503, "the service is unavailable"),
    "ServiceRedirectTemporary": (ProviderConnectionError, None, "the service redirected"),
    "ServiceRedirectPermanent": (ProviderConnectionError, None, "the service redirected"),
}


def cancellation_error(code: Any, details: str = "") -> ProviderError:
    """Translate a ``CancellationErrorCode`` (enum, name or value) and its details text.

    The details are the SDK's own text (they name the failure and a session id, never the
    key); they are cut to a few hundred characters.
    """
    name = getattr(code, "name", None)
    if name is None:
        try:
            name = speechsdk.CancellationErrorCode(code).name
        except ValueError:
            name = str(code)
    cls, status, text = _ERRORS.get(name, (ProviderError, None, "the service reported an error"))
    details = " ".join(details.split())[:_MAX_DETAILS_CHARS]
    message = f"{text} ({name}: {details})" if details else f"{text} ({name})"
    return cls(message, provider=PROVIDER, status=status)


# -- blocking calls -----------------------------------------------------------------------------


async def call_blocking(fn: Callable[[], T], *, timeout_s: float, what: str) -> T:
    """Run a blocking SDK call in a daemon thread and await its result.

    Raises:
        ProviderTimeout: it did not return within ``timeout_s`` (the thread is left to finish;
            it holds no lock of ours).
        Exception: whatever ``fn`` raised.

    Cancellation: safe for the caller; the thread runs to completion and its result is
    dropped (``fn`` must therefore leave nothing behind that needs the caller).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def run() -> None:
        try:
            value: Any = fn()
            ok = True
        except BaseException as exc:
            value, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=run, name=f"azure-speech:{what}", daemon=True).start()
    try:
        async with asyncio.timeout(timeout_s):
            return await future
    except TimeoutError:
        raise ProviderTimeout(f"{what} did not finish in time", provider=PROVIDER) from None
