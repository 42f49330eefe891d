"""The encrypted vault: key derivation, round trips, rotation and what a dump reveals."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.fernet import InvalidToken
from structlog.testing import capture_logs

from familiar_connect.errors import VaultError, VaultKeyError
from familiar_connect.storage.db import Database, open_database
from familiar_connect.storage.vault import (
    MIN_MASTER_KEY_CHARS,
    Vault,
    derive_keys,
    master_key_variable,
    master_keys_from_env,
)

KEY_V1 = "correct-horse-battery-staple-v1"
KEY_V2 = "second-master-key-for-rotation"
CANARY = "oauth:zzCANARYtokenVALUE9981"


@pytest.fixture(name="db_path")
def fixture_db_path(tmp_path: Path) -> Path:
    return tmp_path / "familiar.db"


@pytest.fixture(name="db")
async def fixture_db(db_path: Path) -> AsyncIterator[Database]:
    db = await open_database(db_path)
    yield db
    await db.close()


@pytest.fixture(name="vault")
def fixture_vault(db: Database) -> Vault:
    return Vault(db, {1: KEY_V1})


class TestKeyDerivation:
    def test_derivation_is_deterministic_per_master_key(self) -> None:
        """The same master key always yields the same Fernet key; another key does not."""
        token = derive_keys({1: KEY_V1})[1].encrypt(b"x")
        assert derive_keys({1: KEY_V1})[1].decrypt(token) == b"x"
        with pytest.raises(InvalidToken):
            derive_keys({1: KEY_V2})[1].decrypt(token)

    def test_short_master_key_is_refused_by_variable_name(self) -> None:
        """A master key under the minimum length raises VaultKeyError naming the variable only."""
        short = "tooShort12"
        assert len(short) < MIN_MASTER_KEY_CHARS
        with pytest.raises(VaultKeyError) as info:
            derive_keys({1: KEY_V1, 3: short})
        assert "FAMILIAR_MASTER_KEY_V3" in str(info.value)
        assert short not in str(info.value)

    def test_variable_names_per_version(self) -> None:
        """Version 1 is FAMILIAR_MASTER_KEY and version N is FAMILIAR_MASTER_KEY_V{N}."""
        assert master_key_variable(1) == "FAMILIAR_MASTER_KEY"
        assert master_key_variable(2) == "FAMILIAR_MASTER_KEY_V2"

    def test_keys_are_read_from_environment_names(self) -> None:
        """master_keys_from_env maps variables to versions and ignores unrelated or empty ones."""
        env = {
            "FAMILIAR_MASTER_KEY": KEY_V1,
            "FAMILIAR_MASTER_KEY_V2": KEY_V2,
            "FAMILIAR_MASTER_KEY_V4": "",
            "OTHER": "x",
        }
        assert master_keys_from_env(env) == {1: KEY_V1, 2: KEY_V2}
        with pytest.raises(VaultKeyError, match="FAMILIAR_MASTER_KEY_V1 is not a valid") as info:
            master_keys_from_env({"FAMILIAR_MASTER_KEY_V1": KEY_V1})
        assert KEY_V1 not in str(info.value)


class TestVault:
    async def test_round_trip(self, vault: Vault) -> None:
        """A stored secret reads back equal; an unknown name reads as None."""
        await vault.put("twitch.access_token", CANARY)
        assert await vault.get("twitch.access_token") == CANARY
        assert await vault.get("missing") is None

    async def test_put_replaces_and_delete_removes(self, vault: Vault) -> None:
        """put() overwrites a secret; delete() removes it and reports whether it existed."""
        await vault.put("k", "one")
        await vault.put("k", "two")
        await vault.put("a", "x")
        assert await vault.get("k") == "two"
        assert await vault.names() == ["a", "k"]
        assert await vault.delete("k") is True
        assert await vault.delete("k") is False
        assert await vault.names() == ["a"]

    async def test_bad_names_and_oversized_values_are_refused(self, vault: Vault) -> None:
        """Empty or control-character names and huge values raise ValueError."""
        with pytest.raises(ValueError, match="name"):
            await vault.put("", "x")
        with pytest.raises(ValueError, match="name"):
            await vault.put("a\x00b", "x")
        with pytest.raises(ValueError, match="at most"):
            await vault.put("big", "x" * 70_000)

    async def test_no_master_key_is_refused(self, db: Database) -> None:
        """An empty key mapping raises VaultKeyError pointing at FAMILIAR_MASTER_KEY."""
        with pytest.raises(VaultKeyError, match="FAMILIAR_MASTER_KEY"):
            Vault(db, {})

    async def test_rotation_to_v2(self, db: Database) -> None:
        """rotate() re-tags every row to V2; afterwards V1 alone cannot read them."""
        old = Vault(db, {1: KEY_V1})
        await old.put("a", "alpha")
        await old.put("b", CANARY)
        assert await old.audit() == {1: 2}

        both = Vault(db, {1: KEY_V1, 2: KEY_V2})
        assert both.newest_version == 2
        assert await both.get("a") == "alpha"  # still readable before rotating
        await both.put("c", "charlie")  # new writes use V2 at once
        assert await both.audit() == {1: 2, 2: 1}
        assert await both.rotate() == 2
        assert await both.audit() == {2: 3}
        assert await both.rotate() == 0
        assert [await both.get(n) for n in ("a", "b", "c")] == ["alpha", CANARY, "charlie"]

        only_v2 = Vault(db, {2: KEY_V2})
        assert await only_v2.get("b") == CANARY
        only_v1 = Vault(db, {1: KEY_V1})
        with pytest.raises(VaultKeyError) as info:
            await only_v1.get("b")
        message = str(info.value)
        assert "'b'" in message and "version 2" in message and "FAMILIAR_MASTER_KEY_V2" in message
        assert CANARY not in message

    async def test_rotation_is_all_or_nothing(self, db: Database) -> None:
        """If one row cannot be decrypted, rotate() raises and changes no row."""
        await Vault(db, {1: KEY_V1}).put("a", "alpha")
        await Vault(db, {7: "a-key-for-version-seven"}).put("z", "zulu")
        partial = Vault(db, {1: KEY_V1, 2: KEY_V2})
        with pytest.raises(VaultKeyError, match="version 7"):
            await partial.rotate()
        assert await partial.audit() == {1: 1, 7: 1}
        assert await partial.get("a") == "alpha"

    async def test_wrong_master_key_names_secret_not_value(self, db: Database) -> None:
        """Reading with the wrong master key raises VaultKeyError without the value or keys."""
        await Vault(db, {1: KEY_V1}).put("twitch.refresh_token", CANARY)
        wrong = Vault(db, {1: "a-different-master-key-entirely"})
        with pytest.raises(VaultKeyError) as info:
            await wrong.get("twitch.refresh_token")
        message = str(info.value)
        assert "twitch.refresh_token" in message and "version 1" in message
        for secret in (CANARY, KEY_V1, "a-different-master-key-entirely"):
            assert secret not in message
            assert secret not in repr(info.value.__cause__)

    async def test_ciphertext_moved_to_another_name_is_refused(
        self, vault: Vault, db: Database
    ) -> None:
        """A ciphertext copied onto another secret's row does not decrypt under that name."""
        await vault.put("admin.key", CANARY)
        await vault.put("public.note", "harmless")
        await db.execute(
            "UPDATE vault_secrets SET ciphertext = "
            "(SELECT ciphertext FROM vault_secrets WHERE name = 'admin.key') "
            "WHERE name = 'public.note'"
        )
        with pytest.raises(VaultError, match="belongs to another secret") as info:
            await vault.get("public.note")
        assert CANARY not in str(info.value)

    async def test_dump_reveals_no_secret(self, db_path: Path) -> None:
        """Raw bytes of the database, WAL and SHM files never contain a secret in clear."""
        db = await open_database(db_path)
        vault = Vault(db, {1: KEY_V1})
        await vault.put("twitch.access_token", CANARY)
        await vault.put("twitch.access_token", CANARY + "-refreshed")

        def raw_files() -> bytes:
            blobs = b""
            for suffix in ("", "-wal", "-shm"):
                path = db_path.with_name(db_path.name + suffix)
                if path.exists():
                    blobs += path.read_bytes()
            return blobs

        while_open = raw_files()
        assert len(while_open) > 0
        await db.close()
        after_close = raw_files()
        for blob in (while_open, after_close):
            assert CANARY.encode() not in blob
            assert KEY_V1.encode() not in blob
        conn = sqlite3.connect(db_path)
        try:
            dump = "\n".join(conn.iterdump())
        finally:
            conn.close()
        assert "twitch.access_token" in dump  # names are not secret
        assert CANARY not in dump

    async def test_logs_carry_names_not_values(self, db: Database) -> None:
        """Vault log events name the secret and key version, never the value or key."""
        vault = Vault(db, {1: KEY_V1, 2: KEY_V2})
        with capture_logs() as logs:
            await vault.put("twitch.access_token", CANARY)
            await vault.get("twitch.access_token")
            await vault.rotate()
            await vault.delete("twitch.access_token")
        assert any(e["event"] == "vault_secret_stored" for e in logs)
        text = repr(logs)
        for secret in (CANARY, KEY_V1, KEY_V2):
            assert secret not in text
