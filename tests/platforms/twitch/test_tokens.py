"""Scopes per feature, stored tokens in the vault, and the [twitch] configuration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from familiar_connect.errors import VaultError
from familiar_connect.platforms.twitch.config import KindSection, TwitchSection
from familiar_connect.platforms.twitch.scopes import (
    FEATURES,
    describe_missing,
    missing_scopes,
    scopes_for,
)
from familiar_connect.platforms.twitch.tokens import StoredToken, TwitchTokenStore, vault_name
from familiar_connect.storage.db import Database, open_database
from familiar_connect.storage.vault import Vault

MASTER = "unit-tests-master-key-0123456789"


def token(role: str = "bot", user_id: str = "2000", access: str = "acc-secret-1") -> StoredToken:
    return StoredToken(
        role=role,  # type: ignore[arg-type]
        user_id=user_id,
        login="familiarbot",
        access_token=access,
        refresh_token="ref-secret-1",
        scopes=("user:read:chat", "user:write:chat"),
    )


@pytest.fixture(name="db")
async def fixture_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = await open_database(tmp_path / "familiar.db")
    try:
        yield db
    finally:
        await db.close()


class TestScopes:
    def test_each_role_gets_its_features_scopes(self) -> None:
        """The bot asks for chat scopes only; the broadcaster for the enabled channel events."""
        assert scopes_for("bot", FEATURES) == ("user:read:chat", "user:write:chat")
        assert scopes_for("broadcaster", ["cheer", "sub", "resub", "raid"]) == (
            "bits:read",
            "channel:read:subscriptions",
        )

    def test_one_account_gets_both_sets(self) -> None:
        """When the bot is the channel's own account its token needs every scope."""
        both = scopes_for("bot", ["chat", "follow"], same_account=True)
        assert both == ("moderator:read:followers", "user:read:chat", "user:write:chat")

    def test_manage_covers_read(self) -> None:
        """channel:manage:redemptions satisfies channel:read:redemptions."""
        assert missing_scopes(["channel:manage:redemptions"], ["channel:read:redemptions"]) == []
        assert missing_scopes([], ["bits:read", "channel:read:ads"]) == [
            "bits:read",
            "channel:read:ads",
        ]

    def test_description_names_features_scopes_and_command(self) -> None:
        """The message says which feature lacks which scope and how to fix it."""
        text = describe_missing({"cheer": ["bits:read"]}, role="broadcaster")
        assert "cheers need bits:read" in text
        assert "familiar twitch login --as broadcaster" in text


class TestStoredToken:
    def test_repr_hides_the_tokens(self) -> None:
        """Neither the access nor the refresh token appears in a repr."""
        shown = repr(token())
        assert "acc-secret-1" not in shown and "ref-secret-1" not in shown

    def test_json_round_trip(self) -> None:
        """A token survives the vault payload format."""
        original = token()
        assert StoredToken.from_json("bot", original.to_json()) == original

    def test_unreadable_payload_is_a_vault_error_without_its_content(self) -> None:
        """A corrupt record names the role and the fix, never the payload."""
        with pytest.raises(VaultError) as caught:
            StoredToken.from_json("bot", '{"user_id": "1", "access_token": "leak-me"}')
        assert "leak-me" not in str(caught.value) and "--as bot" in str(caught.value)


class TestTwitchTokenStore:
    async def test_round_trip_through_the_vault(self, db: Database) -> None:
        """What is saved is loaded back, under the role's vault name, encrypted."""
        store = TwitchTokenStore(Vault(db, {1: MASTER}))
        await store.save(token())
        assert await store.load("bot") == token()
        assert await store.load("broadcaster") is None
        raw = await db.fetchall("SELECT name, ciphertext FROM vault_secrets")
        assert [row[0] for row in raw] == [vault_name("bot")]
        assert b"acc-secret-1" not in bytes(raw[0][1])

    async def test_refresh_updates_every_role_of_that_user(self, db: Database) -> None:
        """When one account is bot and broadcaster, a refresh rewrites both records."""
        store = TwitchTokenStore(Vault(db, {1: MASTER}))
        await store.save(token("bot"))
        await store.save(token("broadcaster"))
        updated = await store.save_refreshed("2000", "acc-new", "ref-new", ())
        assert sorted(updated) == ["bot", "broadcaster"]
        for role in ("bot", "broadcaster"):
            loaded = await store.load(role)  # type: ignore[arg-type]
            assert loaded is not None
            assert (loaded.access_token, loaded.refresh_token) == ("acc-new", "ref-new")
            assert loaded.scopes == ("user:read:chat", "user:write:chat")
        assert await store.save_refreshed("9999", "a", "b", ()) == []
        assert await store.delete("bot")


class TestTwitchSection:
    def test_defaults(self) -> None:
        """The defaults answer chat, subs, gifts, cheers and raids; ad breaks are off."""
        config = TwitchSection()
        assert config.kind("raid").priority > config.kind("chat").priority
        assert not config.kind("ad_break").enabled
        assert config.chat_messages_per_30s == 20

    def test_invalid_values_are_refused(self) -> None:
        """Unknown keys, bad routes and blank titles are validation errors."""
        with pytest.raises(ValidationError):
            TwitchSection.model_validate({"unknown": 1})
        with pytest.raises(ValidationError):
            KindSection.model_validate({"answer": "smoke signals"})
        with pytest.raises(ValidationError):
            TwitchSection.model_validate({"redemptions": ["  "]})
        with pytest.raises(ValidationError):
            TwitchSection.model_validate({"ignore_prefixes": [""]})

    def test_kind_lookup(self) -> None:
        """kind() returns a kind's table and refuses other names."""
        config = TwitchSection.model_validate({"gift": {"priority": 99}})
        assert config.kind("gift").priority == 99
        with pytest.raises(KeyError):
            config.kind("join_in")
