"""Scrub secret values and credential patterns out of text and log values.

A :class:`Redactor` knows two kinds of things to hide:

* **Configured secrets**: the exact values of API keys, bot tokens and
  passwords the process was given, plus the forms they take in transit (URL
  encoding, JSON and ``repr`` escaping). Values shorter than
  :data:`MIN_SECRET_LENGTH` characters are ignored: redacting ``"a"`` or
  ``"1234"`` would mangle ordinary text and protect nothing. Base64 forms are
  not added: a secret is rarely encoded on its own (HTTP Basic encodes
  ``user:password`` together, which the ``Authorization`` pattern covers).
* **Credential patterns** that are secret whatever their value:
  ``Authorization``-style header values, ``Bearer``/``Token``/``Bot``/``OAuth``
  tokens, ``token=``/``api_key=``/``password=``-style parameters, OpenRouter
  and other ``sk-`` keys, Discord bot tokens, JWTs, Twitch ``oauth:`` tokens
  and passwords in URLs. The parameter or header name is kept and only the
  value is replaced (``token=[REDACTED]``), so logs stay readable.

Replacing is done by one precompiled regular expression holding every
secret form and pattern. A cheaper trigger runs first (literal-led
expressions, about 3 µs for a 200-character line), so text with nothing to
hide never meets the full expression and comes back as the same object. The
redactor is safe to share between threads; :meth:`Redactor.add_secrets` swaps
in new expressions atomically.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import quote, quote_plus

__all__ = ["DEFAULT_MARKER", "MIN_SECRET_LENGTH", "Redactor", "SecretLike"]

DEFAULT_MARKER = "[REDACTED]"

# Shorter values are ignored: they would match inside ordinary words and
# numbers, and a secret that short is not protected by hiding it anyway.
MIN_SECRET_LENGTH = 6

# A replacement can, in pathological cases, splice the marker and the text
# after it into a configured secret (secret "TED]ab" in "TED]abab"). Re-run
# the secret pass a few times, then give up and hide the whole string.
_MAX_PASSES = 4

# Containers nested deeper than this are scrubbed through their str().
_MAX_DEPTH = 16

# Types that cannot carry a secret: returned as they are, without str().
_INERT_TYPES: frozenset[type] = frozenset({int, float, bool, complex, type(None)})


class SecretLike(Protocol):
    """Anything holding a secret the way ``pydantic.SecretStr`` does."""

    def get_secret_value(self) -> str:
        """The plain secret."""
        ...


# --- credential patterns ---------------------------------------------------------------
#
# Each pattern has exactly one capturing group, the span that gets replaced;
# everything else in it is non-capturing so the group name identifies the
# pattern (``Match.lastgroup``). Prefixes are atomic (``(?>...)``) and values
# refuse to start with the marker, so already-redacted text never matches
# again: redacting redacted text changes nothing.

# Header names whose value is a credential. ``Cartesia-Version``, ``Client-Id``
# and similar are deliberately absent: they are not secret.
_HEADER_NAME = (
    r"(?:proxy-)?authorization|set-cookie|cookie|x-auth-token"
    r"|(?:[a-z0-9]+-)*(?:api-?key|subscription-key)"
)
# Authorization schemes kept in front of the redacted value, for readability.
_SCHEME = r"bearer|bot|basic|token|oauth|digest"

# Parameter / field names whose value is a credential: anything ending in
# token, secret, password or api key (``access_token``, ``client_secret``,
# ``x-api-key``), a few named key kinds, and bare ``key``. Plain ``*_key``
# names (``cache_key``) and plurals (``max_tokens``) are left alone.
_PARAM_NAME = (
    r"(?:[a-z0-9]+[_-])*"
    r"(?:token|secret|password|passwd|api[_-]?key"
    r"|(?:secret|private|access|stream|subscription)[_-]key)"
    r"|key"
)

# Characters that may appear in a token value after a scheme word.
_BEARER_CHARS = r"[\w.~+/=-]"
# Characters that end a parameter value: separators, quotes, brackets and the
# backslash that starts an escape in JSON or repr output.
_PARAM_VALUE = r"[^\s&'\"<>,;)\\]"
# Literal words that are not credentials when they appear as a value.
_NOT_A_VALUE = r"(?:None|null|True|False|true|false)(?![^\s&'\"<>,;)\\])"


def _credential_patterns(marker: str) -> list[str]:
    """Regular-expression sources for the credential patterns, in priority order."""
    not_marker = f"(?!{re.escape(marker)})"
    return [
        # Header lines, JSON/dict entries and (name, value) tuples:
        #   Authorization: Bearer xyz   "x-api-key": "xyz"   ('cookie', 'a=b')
        # The value runs to the end of the line or the closing quote.
        r"(?<![\w-])(?>(?ai:" + _HEADER_NAME + r")"
        r"(?:['\"]?[ \t]*:[ \t]*|['\"][ \t]*,[ \t]*b?)['\"]?"
        r"(?:(?ai:" + _SCHEME + r")[ \t]+)?)"
        r"(?P<v0>" + not_marker + r"[^\s'\"\\][^\r\n'\"\\]*)",
        # A scheme word and a token in free text: "Bearer eyJhb...", "Bot MTA...".
        # Words like "Bot" and "Token" are ordinary English, so the token must
        # be at least 16 characters and contain a digit.
        r"(?<![\w-])(?>(?ai:bearer|token|bot|oauth)[ \t]+)"
        r"(?P<v1>" + not_marker + r"(?=" + _BEARER_CHARS + r"*\d)" + _BEARER_CHARS + r"{16,})",
        # Twitch IRC passwords: PASS oauth:abc123...
        r"(?<![\w-])(?ai:oauth):(?P<v2>" + not_marker + r"[A-Za-z0-9]{8,})",
        # Query, form and keyword parameters: ?token=abc&x=1, password='x',
        # "api_key": "x", api_key = "x". An unquoted name takes "="; a quoted
        # one also ":". Only a quoted value may follow spaces: in "password=
        # user=bob" the password is empty, not "user=bob".
        r"(?<![\w-])(?>(?ai:" + _PARAM_NAME + r")"
        r"(?:[ \t]*=(?:[ \t]*['\"])?|['\"][ \t]*[:=][ \t]*['\"]?))"
        r"(?P<v3>" + not_marker + r"(?!" + _NOT_A_VALUE + r")" + _PARAM_VALUE + r"+)",
        # OpenRouter keys (sk-or-v1-<hex>) and other sk- provider keys.
        r"(?<![\w-])(?P<v4>sk-or-v1-[A-Za-z0-9]+|sk-[A-Za-z0-9_-]{16,})",
        # Discord bot tokens: base64 user id . timestamp . HMAC.
        r"(?<![\w-])(?P<v5>[MNO][\w-]{23,27}\.[\w-]{6,7}\.[\w-]{27,})",
        # JSON Web Tokens: base64url '{"' header . payload . signature.
        r"(?<![\w-])(?P<v6>eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]*)",
        # Passwords in URLs: scheme://user:password@host.
        r"(?<=://)[^/\s:@'\"]+:(?P<v7>" + not_marker + r"[^/\s@'\"]+)(?=@)",
    ]


# --- prefilter ---------------------------------------------------------------------------
#
# The credential patterns above are too elaborate for re's fast scanning (about
# 50 µs per console line). Nearly every log line contains none of them, so a
# cheap trigger decides first whether the full expression must run at all.
# Every trigger starts with a literal, which re scans for quickly (about 1.5 µs
# per line). Triggers must match wherever a pattern could: false alarms only
# cost time, a miss would leak.

# Run on text.casefold(): the names above match ASCII letters of either case,
# and casefold() lowercases those (and only grows other characters), so a name
# found in the text is found, lowercased, in its casefold. A header or parameter
# name ends in one of these words and is followed by ":", "=" or "," (maybe
# after a quote). Spelled out flat because re only scans quickly when every
# alternative starts with a literal character.
_NAME_SEPARATOR = r"['\"]?[ \t]*[:=,]"
_FOLDED_TRIGGERS = "|".join(
    [
        *(word + _NAME_SEPARATOR for word in ("authorization", "cookie", "token", "secret")),
        *(word + _NAME_SEPARATOR for word in ("passwd", "password", "key")),
        *(word + r"[ \t]+\S{16}" for word in ("bearer", "token", "bot", "oauth")),
        "oauth:",
        "sk-or-v1-",
        r"sk-[a-z0-9_-]{16}",
        "eyj",
    ]
)
# Run on the original text, with the secret values: shapes without a name.
_PLAIN_TRIGGERS = (
    r"\.[\w-]{6,7}\.[\w-]{27}"  # the middle of a Discord token
    r"|://[^/\s:@'\"]+:[^/\s@'\"]+@"  # a password in a URL
)


def _plain(secret: str | SecretLike) -> str:
    """The plain value of a str or ``SecretStr``-like secret."""
    if isinstance(secret, str):
        return secret
    return secret.get_secret_value()


def _variants(value: str) -> set[str]:
    """The forms a secret takes in URLs, JSON and repr() output."""
    return {
        value,
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        json.dumps(value)[1:-1],
        repr(value)[1:-1],
    }


_FOLDED = re.compile(_FOLDED_TRIGGERS)


class _Compiled:
    """One immutable generation of the redactor's expressions, swapped atomically.

    Attributes:
        plain: trigger for the original text (secret forms, nameless shapes).
        combined: every secret form and credential pattern, for replacing.
        secrets: the secret forms alone, longest first, or None if there are none.
    """

    __slots__ = ("combined", "plain", "secrets")

    def __init__(self, marker: str, values: frozenset[str]) -> None:
        forms: set[str] = set()
        for value in values:
            forms.update(_variants(value))
        # A form that occurs inside the marker would be recreated by every
        # replacement (values themselves are filtered out before this).
        ordered = sorted((f for f in forms if f not in marker), key=lambda f: (-len(f), f))
        alternatives = _credential_patterns(marker)
        if ordered:
            # Longest first, so a secret that extends another is hidden whole.
            literal = "|".join(re.escape(f) for f in ordered)
            alternatives.insert(0, f"(?P<s>{literal})")
            self.secrets: re.Pattern[str] | None = re.compile(literal)
            self.plain = re.compile(f"{literal}|{_PLAIN_TRIGGERS}")
        else:
            self.secrets = None
            self.plain = re.compile(_PLAIN_TRIGGERS)
        self.combined = re.compile("|".join(alternatives))

    def may_match(self, text: str) -> bool:
        """Cheap check: False means ``combined`` cannot match ``text``."""
        return self.plain.search(text) is not None or _FOLDED.search(text.casefold()) is not None


class Redactor:
    """Replaces configured secrets and credential patterns with a marker.

    Args:
        secrets: secret values to hide (``str`` or ``SecretStr``-like). Empty
            values, values shorter than :data:`MIN_SECRET_LENGTH` and values
            that occur inside ``marker`` are ignored.
        marker: the text that replaces each secret; must not be empty.

    Raises:
        ValueError: ``marker`` is empty.
    """

    __slots__ = ("_compiled", "_lock", "_marker", "_secrets")

    def __init__(
        self, secrets: Iterable[str | SecretLike] = (), *, marker: str = DEFAULT_MARKER
    ) -> None:
        if not marker:
            raise ValueError("the redaction marker must not be empty")
        self._marker = marker
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self._compiled = _Compiled(marker, self._secrets)
        self.add_secrets(secrets)

    def __repr__(self) -> str:
        # Never show the values themselves.
        return f"<Redactor with {len(self._secrets)} secrets>"

    @property
    def marker(self) -> str:
        """The replacement text."""
        return self._marker

    @property
    def secret_count(self) -> int:
        """How many secret values are hidden (each also in its encoded forms)."""
        return len(self._secrets)

    def add_secrets(self, secrets: Iterable[str | SecretLike]) -> None:
        """Start hiding more secret values, e.g. a refreshed OAuth token.

        Values already known stay hidden, so an old token is still scrubbed
        after a refresh. Values are ignored as for the constructor. Safe to
        call while other threads redact: each call sees the old or the new set.
        """
        fresh = {_plain(s) for s in secrets}
        fresh = {v for v in fresh if len(v) >= MIN_SECRET_LENGTH and v not in self._marker}
        with self._lock:
            if fresh <= self._secrets:
                return
            secrets_now = self._secrets | fresh
            compiled = _Compiled(self._marker, secrets_now)
            self._secrets, self._compiled = secrets_now, compiled

    def redact(self, text: str) -> str:
        """Return ``text`` with every secret and credential value replaced.

        Returns the very same object when there is nothing to hide. The result
        never contains a configured secret: if replacements keep recreating
        one, the whole text becomes the marker.
        """
        compiled = self._compiled
        if not compiled.may_match(text):
            return text
        return self._replace(compiled, text)

    def _replace(self, compiled: _Compiled, text: str) -> str:
        marker = self._marker

        def replace(match: re.Match[str]) -> str:
            group = match.lastgroup
            if group == "s" or group is None:
                return marker
            start, end = match.span(group)
            whole = match.group()
            offset = match.start()
            return whole[: start - offset] + marker + whole[end - offset :]

        out = compiled.combined.sub(replace, text)
        if compiled.secrets is None:
            return out
        for _ in range(_MAX_PASSES):
            if compiled.secrets.search(out) is None:
                return out
            out = compiled.secrets.sub(marker, out)
        return out if compiled.secrets.search(out) is None else marker

    def redact_value(self, obj: Any) -> Any:
        """Return ``obj`` with secrets hidden in every string it contains.

        Walks ``str``, ``bytes``/``bytearray``, ``dict`` (keys and values),
        ``list``, ``tuple``, ``set`` and ``frozenset`` recursively. A dict
        value under a credential-like key (``token``, ``api_key``,
        ``Authorization``...) becomes the marker unless it is ``None``, a
        bool or empty. Bytes that need redacting come back as ``str``
        (decoded as UTF-8 with replacement characters). Any other object,
        exceptions included, is replaced by its redacted ``str()`` if that
        contains something to hide (exceptions as ``"ClassName: message"``);
        otherwise it is returned as is.

        Anything with nothing to hide comes back as the same object. Cycles
        and deep nesting are handled; the input is never modified.
        """
        kind = type(obj)
        if kind is str:
            return self.redact(obj)
        if kind in _INERT_TYPES:
            return obj
        compiled = self._compiled
        parts: list[str] = []
        _collect(obj, parts, 0, set())
        # Each key is followed by "=" so a credential-named key trips the
        # trigger just as "token=" does in text.
        if not compiled.may_match("=\n".join(parts) + "="):
            return obj
        return self._walk(obj, 0, set())

    def _walk(self, obj: Any, depth: int, seen: set[int]) -> Any:
        kind = type(obj)
        if kind is str:
            return self.redact(obj)
        if kind in _INERT_TYPES:
            return obj
        if kind is bytes or kind is bytearray:
            text = bytes(obj).decode("utf-8", errors="replace")
            redacted = self.redact(text)
            return obj if redacted is text else redacted
        if kind in _CONTAINERS:
            if depth >= _MAX_DEPTH:
                return self._scrub_object(obj)
            if id(obj) in seen:
                # A cycle: its repr() shows "[...]" here, nothing more to hide.
                return obj
            seen.add(id(obj))
            try:
                if kind is dict:
                    return self._walk_dict(obj, depth, seen)
                items = [self._walk(item, depth + 1, seen) for item in obj]
                if all(new is old for new, old in zip(items, obj, strict=True)):
                    return obj
                return kind(items)
            finally:
                seen.discard(id(obj))
        if isinstance(obj, str):
            # str subclasses (StrEnum members...) are text too.
            redacted = self.redact(obj)
            return obj if redacted is obj else redacted
        return self._scrub_object(obj)

    def _walk_dict(self, obj: dict[Any, Any], depth: int, seen: set[int]) -> dict[Any, Any]:
        changed = False
        out: dict[Any, Any] = {}
        for key, value in obj.items():
            new_key = self._walk(key, depth + 1, seen)
            if isinstance(key, str) and _is_credential_name(key) and _carries_value(value):
                new_value: Any = self._marker
            else:
                new_value = self._walk(value, depth + 1, seen)
            changed = changed or new_key is not key or new_value is not value
            out[new_key] = new_value
        return out if changed else obj

    def _scrub_object(self, obj: Any) -> Any:
        text = _safe_str(obj)
        if text is None:
            return obj
        redacted = self.redact(text)
        if redacted is text:
            return obj
        if isinstance(obj, BaseException):
            return f"{type(obj).__name__}: {redacted}"
        return redacted


_CONTAINERS: frozenset[type] = frozenset({dict, list, tuple, set, frozenset})


def _safe_str(obj: Any) -> str | None:
    """str(obj), or None if its __str__ raises: a broken object must not break logging."""
    try:
        return str(obj)
    except Exception:
        return None


def _collect(obj: Any, parts: list[str], depth: int, seen: set[int]) -> None:
    """Append every piece of text ``Redactor._walk`` would look at to ``parts``."""
    kind = type(obj)
    if kind is str:
        parts.append(obj)
    elif kind in _INERT_TYPES:
        return
    elif kind is bytes or kind is bytearray:
        parts.append(bytes(obj).decode("utf-8", errors="replace"))
    elif kind in _CONTAINERS and depth < _MAX_DEPTH:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        # Strings and numbers are handled inline: this runs for every field of
        # every log event.
        pieces = itertools.chain.from_iterable(obj.items()) if kind is dict else obj
        for piece in pieces:
            piece_type = type(piece)
            if piece_type is str:
                parts.append(piece)
            elif piece_type not in _INERT_TYPES:
                _collect(piece, parts, depth + 1, seen)
        seen.discard(id(obj))
    elif isinstance(obj, str):
        parts.append(obj)
    else:
        text = _safe_str(obj)
        if text is not None:
            parts.append(text)


_CREDENTIAL_NAME = re.compile(f"(?ai:{_HEADER_NAME}|{_PARAM_NAME})")


def _is_credential_name(key: str) -> bool:
    """Whether a dict key names a credential (``token``, ``api_key``, ``Authorization``)."""
    return len(key) <= 64 and _CREDENTIAL_NAME.fullmatch(key) is not None


def _carries_value(value: Any) -> bool:
    """Whether a credential field holds something (not None, a bool or empty)."""
    if value is None or isinstance(value, bool):
        return False
    return not (isinstance(value, (str, bytes, bytearray)) and not value)
