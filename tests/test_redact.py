"""Tests for familiar_connect._redact: secret values and credential patterns."""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import SecretStr

from familiar_connect._redact import DEFAULT_MARKER, MIN_SECRET_LENGTH, Redactor

M = DEFAULT_MARKER
SECRET = "hunter2+/=%secret"  # needs URL encoding: + / = %
OTHER = "correct-horse-battery"
DISCORD_TOKEN = "MTk4NjIyNDgzNDcxOTI1MjQ4.Cl2FMQ.ZnCjm1XVW7vRze4b7Cq4se7kKWs"
OPENROUTER_KEY = "sk-or-v1-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"


@pytest.fixture(name="redactor")
def _redactor() -> Redactor:
    return Redactor([SECRET, OTHER])


@pytest.fixture(name="bare")
def _bare() -> Redactor:
    return Redactor()


class TestRedactorSecrets:
    def test_plain_value_is_replaced(self, redactor: Redactor) -> None:
        """A configured secret anywhere in the text becomes the marker."""
        assert redactor.redact(f"key is {SECRET}!") == f"key is {M}!"

    @pytest.mark.parametrize(
        "encode",
        [
            lambda v: quote(v, safe=""),
            quote,
            quote_plus,
            lambda v: json.dumps(v)[1:-1],
            lambda v: repr(v)[1:-1],
        ],
        ids=["quote-safe-empty", "quote", "quote_plus", "json", "repr"],
    )
    def test_encoded_forms_are_replaced(self, encode: Callable[[str], str]) -> None:
        """The URL-encoded, JSON-escaped and repr-escaped forms of a secret are hidden too."""
        secret = 'tab\there"quote\\slash/plus+'
        r = Redactor([secret])
        encoded = encode(secret)
        assert encoded != secret  # each case must exercise an actual encoding
        out = r.redact(f"x {encoded} y")
        assert encoded not in out
        assert out == f"x {M} y"

    def test_url_encoded_secret_in_query_string(self, redactor: Redactor) -> None:
        """A secret sent percent-encoded in a URL is hidden."""
        out = redactor.redact(f"GET https://h/cb?state={quote(SECRET, safe='')}&page=2")
        assert quote(SECRET, safe="") not in out
        assert out.endswith(f"state={M}&page=2")

    def test_every_occurrence_is_replaced(self, redactor: Redactor) -> None:
        """Repeated and different secrets in one string are all hidden."""
        out = redactor.redact(f"{SECRET} and {OTHER} and {SECRET}")
        assert out == f"{M} and {M} and {M}"

    def test_longest_secret_wins(self) -> None:
        """When one secret extends another, the longer one is hidden whole."""
        r = Redactor(["abcdef", "abcdefghij"])
        assert r.redact("xabcdefghijx") == f"x{M}x"

    @pytest.mark.parametrize("value", ["", "a", "12345", "abc"])
    def test_short_and_empty_secrets_are_ignored(self, value: str) -> None:
        """Values under MIN_SECRET_LENGTH are not secrets: redacting them would mangle text."""
        r = Redactor([value])
        assert r.secret_count == 0
        text = f"a 12345 abc {value} ok"
        assert r.redact(text) == text

    def test_minimum_length_secret_is_used(self) -> None:
        """A value exactly MIN_SECRET_LENGTH long is redacted."""
        value = "q" * MIN_SECRET_LENGTH
        assert Redactor([value]).redact(f"<{value}>") == f"<{M}>"

    def test_secret_inside_the_marker_is_ignored(self) -> None:
        """A value that occurs in the marker is ignored, since every replacement would recreate it."""
        r = Redactor(["REDACTED"])
        assert r.secret_count == 0

    def test_secretstr_values_are_accepted(self) -> None:
        """SecretStr-like objects are unwrapped with get_secret_value()."""
        r = Redactor([SecretStr("pydantic-secret-1")])
        assert r.redact("v=pydantic-secret-1.") == f"v={M}."

    def test_add_secrets_at_runtime(self, redactor: Redactor) -> None:
        """A secret added later (a refreshed token) is hidden and the old ones stay hidden."""
        assert redactor.redact("new-token-value") == "new-token-value"
        redactor.add_secrets(["new-token-value"])
        assert redactor.redact(f"new-token-value {SECRET}") == f"{M} {M}"
        assert redactor.secret_count == 3

    def test_custom_marker(self) -> None:
        """The marker can be chosen."""
        assert Redactor([SECRET], marker="***").redact(f"<{SECRET}>") == "<***>"

    def test_empty_marker_is_rejected(self) -> None:
        """An empty marker would leak nothing but silently delete text, so it is refused."""
        with pytest.raises(ValueError, match="marker"):
            Redactor([SECRET], marker="")

    def test_fast_path_returns_same_object(self, redactor: Redactor) -> None:
        """Text with nothing to hide comes back as the very same object."""
        text = "turn_completed channel_id=1 guild_id=2 model=openai/gpt-4o ttft_s=0.7"
        assert redactor.redact(text) is text

    def test_redaction_is_idempotent(self, redactor: Redactor) -> None:
        """Redacting already-redacted text changes nothing."""
        once = redactor.redact(f"Authorization: Bearer abc123 token={SECRET}&x=1 {OPENROUTER_KEY}")
        assert redactor.redact(once) == once

    def test_marker_splice_cannot_recreate_secret(self) -> None:
        """A secret that the marker plus following text would spell out is still hidden."""
        r = Redactor(["TED]ab"])
        out = r.redact("TED]ababab")
        assert "TED]ab" not in out

    def test_endless_splicing_hides_everything(self) -> None:
        """If replacing keeps recreating a secret, the whole text becomes the marker."""
        r = Redactor(["TED]ab"])
        assert r.redact("TED]" + "ab" * 20) == M

    def test_repr_does_not_show_secrets(self, redactor: Redactor) -> None:
        """The redactor's repr names no secret value."""
        assert SECRET not in repr(redactor)
        assert OTHER not in repr(redactor)


class TestRedactorPatterns:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("Authorization: Bearer abc.def-123", f"Authorization: Bearer {M}"),
            ("authorization:Basic dXNlcjpwYXNz", f"authorization:Basic {M}"),
            (f"Authorization: Bot {DISCORD_TOKEN}", f"Authorization: Bot {M}"),
            ("Authorization: OAuth abcdefghijkl", f"Authorization: OAuth {M}"),
            ("Authorization: Token 0123abcd", f"Authorization: Token {M}"),
            ("Authorization: something custom\nnext line", f"Authorization: {M}\nnext line"),
            ('{"Authorization": "Bearer xyz"}', f'{{"Authorization": "Bearer {M}"}}'),
            ("{'authorization': 'Bot abc'}", f"{{'authorization': 'Bot {M}'}}"),
            ("[('Authorization', 'Bearer q')]", f"[('Authorization', 'Bearer {M}')]"),
            ("Proxy-Authorization: Basic abc", f"Proxy-Authorization: Basic {M}"),
            ("Ocp-Apim-Subscription-Key: 0123abcd", f"Ocp-Apim-Subscription-Key: {M}"),
            ("xi-api-key: 0123abcd", f"xi-api-key: {M}"),
            ("X-API-Key: 0123abcd", f"X-API-Key: {M}"),
            ("api-key: 0123abcd", f"api-key: {M}"),
            ("Cookie: session=abc", f"Cookie: {M}"),
        ],
    )
    def test_header_values(self, bare: Redactor, text: str, expected: str) -> None:
        """Credential header values are replaced; the header name and auth scheme stay."""
        assert bare.redact(text) == expected

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("sent Bearer abcdefgh0123456789xyz", f"sent Bearer {M}"),
            ("bearer abcdefgh0123456789xyz", f"bearer {M}"),
            ("Token 0123456789abcdef0123", f"Token {M}"),
            ("OAuth abcdefghij0123456789", f"OAuth {M}"),
            ("PASS oauth:abcdefghij0123456789", f"PASS oauth:{M}"),
        ],
    )
    def test_scheme_tokens_in_free_text(self, bare: Redactor, text: str, expected: str) -> None:
        """A token after Bearer/Token/OAuth or oauth: is replaced outside headers too."""
        assert bare.redact(text) == expected

    def test_discord_bot_token(self, bare: Redactor) -> None:
        """A Discord bot token is recognised by its shape alone."""
        assert bare.redact(f"Bot {DISCORD_TOKEN} connected") == f"Bot {M} connected"
        assert bare.redact(f"token {DISCORD_TOKEN}") == f"token {M}"

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("GET /x?token=abc123&x=1", f"GET /x?token={M}&x=1"),
            ("/v1?api_key=abc&page=2", f"/v1?api_key={M}&page=2"),
            ("apikey=abc", f"apikey={M}"),
            ("?key=AIzaSyabc&alt=json", f"?key={M}&alt=json"),
            ("access_token=a1&refresh_token=r1", f"access_token={M}&refresh_token={M}"),
            ("client_secret=cs1&grant_type=x", f"client_secret={M}&grant_type=x"),
            ("password=hunter2 user=bob", f"password={M} user=bob"),
            ("secret=s3", f"secret={M}"),
            ("subscription-key=abc", f"subscription-key={M}"),
            ("Subscription-Key=abc", f"Subscription-Key={M}"),
            ("stream_key=live_123", f"stream_key={M}"),
            ("token='abc def'", f"token='{M} def'"),
            ('{"api_key": "abc", "n": 1}', f'{{"api_key": "{M}", "n": 1}}'),
            ("{'password': 'pw'}", f"{{'password': '{M}'}}"),
        ],
    )
    def test_parameters_keep_their_name(self, bare: Redactor, text: str, expected: str) -> None:
        """Credential parameters keep their name and neighbours; only the value is replaced."""
        assert bare.redact(text) == expected

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (f"key {OPENROUTER_KEY} used", f"key {M} used"),
            ("sk-or-v1-abc", M),
            ("sk-ant-api03-abcdefghijklmnop", M),
            (JWT, M),
            ("postgres://user:pa55word@db/x", f"postgres://user:{M}@db/x"),
        ],
    )
    def test_key_shapes(self, bare: Redactor, text: str, expected: str) -> None:
        """Provider keys, JWTs and URL passwords are recognised by their shape."""
        assert bare.redact(text) == expected

    @pytest.mark.parametrize(
        "text",
        [
            "Cartesia-Version: 2024-06-10",
            "Client-Id: abcdef123",
            "max_tokens=512 prompt_tokens=10 token_count=3",
            "cache_key=people/alice.md",
            "Bot started successfully",
            "Token expired, refreshing",
            "Bearer authentication required",
            "task-manager-background-worker",
            "token=None password= secret=null",
            "close code=1000 reason=normal",
            "https://openrouter.ai/api/v1/chat/completions",
            "http://127.0.0.1:8080/v1",
            "familiar_connect.memory.store",
            "the monkey=3 and turkey=4",
        ],
    )
    def test_ordinary_text_is_left_alone(self, bare: Redactor, text: str) -> None:
        """Text that only resembles a credential is returned unchanged."""
        assert bare.redact(text) == text


class TestRedactValue:
    def test_nested_containers(self, redactor: Redactor) -> None:
        """Secrets in nested dicts, lists, tuples, sets and dict keys are hidden, types kept."""
        value = {
            "a": [1, SECRET, ("x", SECRET)],
            SECRET: {"deep": {SECRET}},
            "f": frozenset({OTHER}),
        }
        out = redactor.redact_value(value)
        assert out == {"a": [1, M, ("x", M)], M: {"deep": {M}}, "f": frozenset({M})}

    def test_input_is_not_modified(self, redactor: Redactor) -> None:
        """redact_value builds new containers and leaves the original alone."""
        value = {"a": [SECRET]}
        redactor.redact_value(value)
        assert value == {"a": [SECRET]}

    def test_clean_container_is_same_object(self, redactor: Redactor) -> None:
        """A container with nothing to hide comes back as the same object."""
        value = {"event": "turn_completed", "n": [1, 2.5, None, True, ("ok", b"bytes")]}
        assert redactor.redact_value(value) is value

    def test_partly_dirty_container_keeps_clean_children(self, redactor: Redactor) -> None:
        """Unchanged branches of a redacted container are shared, not copied."""
        clean = ["fine"]
        out = redactor.redact_value({"clean": clean, "dirty": SECRET})
        assert out["clean"] is clean
        assert out["dirty"] == M

    @pytest.mark.parametrize(
        "key", ["token", "api_key", "Authorization", "x-api-key", "client_secret", "password"]
    )
    def test_credential_named_keys(self, bare: Redactor, key: str) -> None:
        """A value under a credential-named key is hidden whatever it looks like."""
        assert bare.redact_value({key: "plain words", "other": "plain words"}) == {
            key: M,
            "other": "plain words",
        }

    @pytest.mark.parametrize("value", [None, True, False, ""])
    def test_credential_named_keys_keep_empty_values(self, bare: Redactor, value: object) -> None:
        """None, booleans and empty strings under a credential key are informative and kept."""
        event = {"token": value}
        assert bare.redact_value(event) is event

    def test_bytes_become_redacted_text(self, redactor: Redactor) -> None:
        """Bytes holding a secret come back as redacted text; invalid UTF-8 does not fail."""
        out = redactor.redact_value(b"\xff" + SECRET.encode())
        assert out == "\ufffd" + M

    def test_clean_bytes_are_same_object(self, redactor: Redactor) -> None:
        """Bytes with nothing to hide are returned as they are."""
        value = b"\x00\x01 ok"
        assert redactor.redact_value(value) is value

    def test_exception_with_secret(self, redactor: Redactor) -> None:
        """An exception whose message holds a secret becomes 'ClassName: redacted message'."""
        out = redactor.redact_value({"error": ValueError(f"bad key {SECRET}")})
        assert out == {"error": f"ValueError: bad key {M}"}

    def test_clean_exception_is_same_object(self, redactor: Redactor) -> None:
        """An exception with a clean message is left as an exception."""
        exc = ValueError("nothing secret")
        assert redactor.redact_value(exc) is exc

    def test_other_objects_use_str(self, redactor: Redactor) -> None:
        """Any other object whose str() shows a secret is replaced by the redacted str()."""

        class Holder:
            def __str__(self) -> str:
                return f"Holder({SECRET})"

        assert redactor.redact_value([Holder()]) == [f"Holder({M})"]

    def test_broken_str_is_tolerated(self, redactor: Redactor) -> None:
        """An object whose __str__ raises is returned unchanged instead of breaking logging."""

        class Broken:
            def __str__(self) -> str:
                raise RuntimeError("no")

        obj = Broken()
        assert redactor.redact_value(obj) is obj
        # "token=" trips the trigger, so the slow path meets the object too.
        assert redactor.redact_value({"token=": obj})["token="] is obj

    def test_cycles_terminate(self, redactor: Redactor) -> None:
        """A self-referencing container is walked without endless recursion."""
        value: list[object] = [SECRET]
        value.append(value)
        out = redactor.redact_value(value)
        assert out[0] == M
        assert out[1] is value

    def test_deep_nesting_falls_back_to_str(self, redactor: Redactor) -> None:
        """Nesting beyond the depth limit is scrubbed through its str()."""
        value: object = SECRET
        for _ in range(40):
            value = [value]
        assert SECRET not in str(redactor.redact_value(value))


# --- properties -------------------------------------------------------------------------

_ALPHABET = string.ascii_letters + string.digits + "+/=%&?:;.,-_~ []()'\"\\\n\té"
_FRAGMENTS = [
    "Authorization",
    "authorization",
    "AUTHORIZATION",
    "Bearer ",
    "bot ",
    "Token",
    "token",
    "api_key",
    "x-api-key",
    "key",
    "secret",
    "password",
    "=",
    ":",
    ": ",
    "'",
    '"',
    ", ",
    " ",
    "\t",
    "\n",
    "sk-",
    "or-v1-",
    "eyJ",
    "eyJhbGciOiJIUzI1NiJ9",
    ".",
    "://",
    "@",
    "-",
    "_",
    "0123456789",
    "abcdefghij",
    "MTk4NjIyNDgzNDcxOTI1MjQ4",
    "Cl2FMQ",
    "oauth:",
    "\u0130",  # LATIN CAPITAL LETTER I WITH DOT ABOVE: casefold grows it
    "\u0131",  # dotless i
    "\u212a",  # KELVIN SIGN: casefolds to "k"
    "\u00df",  # sharp s: casefolds to "ss"
    M,
]


class TestRedactorProperties:
    @given(
        secret=st.text(_ALPHABET, min_size=MIN_SECRET_LENGTH, max_size=40),
        before=st.text(_ALPHABET, max_size=60),
        after=st.text(_ALPHABET, max_size=60),
    )
    def test_secret_never_survives(self, secret: str, before: str, after: str) -> None:
        """Whatever surrounds it, a configured secret and its URL-encoded form never survive redaction."""
        assume(secret not in M)
        r = Redactor([secret])
        assert secret not in r.redact(before + secret + after)
        encoded = quote(secret, safe="")
        assert encoded not in r.redact(before + encoded + after)

    @given(st.lists(st.sampled_from(_FRAGMENTS), max_size=24).map("".join))
    def test_trigger_never_misses_a_pattern(self, text: str) -> None:
        """The cheap trigger fires on every text the full expression would change (white-box)."""
        r = Redactor([OPENROUTER_KEY[:20]])
        compiled = r._compiled
        if compiled.combined.search(text) is not None:
            assert compiled.may_match(text)
        assert r.redact(text) == r._replace(compiled, text)

    @given(st.lists(st.sampled_from(_FRAGMENTS), max_size=24).map("".join))
    def test_idempotent(self, text: str) -> None:
        """Redacting twice gives the same text as redacting once."""
        r = Redactor([SECRET])
        once = r.redact(text)
        assert r.redact(once) == once
