"""Encrypted vault for secrets the bot must persist (Twitch OAuth tokens, user keys).

Key scheme:

* The operator sets ``FAMILIAR_MASTER_KEY`` (key version 1) and, to rotate,
  ``FAMILIAR_MASTER_KEY_V2``, ``FAMILIAR_MASTER_KEY_V3``, ... Each master key
  must be at least :data:`MIN_MASTER_KEY_CHARS` characters.
* Each version's Fernet key is derived with HKDF-SHA256 (RFC 5869) from the
  master key's UTF-8 bytes, ``salt = VAULT_HKDF_SALT``, ``info =
  VAULT_HKDF_INFO``, 32 bytes of output, URL-safe base64 encoded. Salt and
  info are fixed constants so the same master key always opens the same vault;
  changing either makes every stored secret unreadable.
* Every row is tagged with the key version that encrypted it. Writes use the
  newest configured version; :meth:`Vault.rotate` re-encrypts old rows, after
  which the old master key can be removed.
* The encrypted payload is ``name + NUL + value``, and the name is checked on
  read, so a ciphertext copied onto another secret's row is refused rather
  than returned under the wrong name (Fernet has no associated data).

Neither values nor master keys ever appear in logs, exception messages or the
database in clear; messages name the secret and the key version only.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

import aiosqlite
import structlog
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from familiar_connect.errors import VaultError, VaultKeyError
from familiar_connect.storage.db import Database, to_epoch_us

__all__ = [
    "MASTER_KEY_ENV",
    "MAX_NAME_CHARS",
    "MAX_SECRET_CHARS",
    "MIN_MASTER_KEY_CHARS",
    "VAULT_HKDF_INFO",
    "VAULT_HKDF_SALT",
    "Vault",
    "derive_keys",
    "master_key_variable",
    "master_keys_from_env",
]

log = structlog.get_logger(__name__)

MASTER_KEY_ENV: Final = "FAMILIAR_MASTER_KEY"
"""Environment variable holding key version 1; version N adds ``_V{N}``."""
VAULT_HKDF_SALT: Final = b"familiar-connect/vault/hkdf-salt/v1"
"""Fixed HKDF salt (public; it separates this use of the master key from others)."""
VAULT_HKDF_INFO: Final = b"familiar-connect vault v1"
"""Fixed HKDF info string."""
MIN_MASTER_KEY_CHARS: Final = 16
"""Shorter master keys are refused."""
MAX_NAME_CHARS: Final = 128
"""Secret names are 1..this many characters."""
MAX_SECRET_CHARS: Final = 65_536
"""Secret values are at most this many characters."""
MAX_KEY_VERSION: Final = 9_999

_VERSIONED_ENV = re.compile(rf"^{MASTER_KEY_ENV}_V([0-9]+)$")


def master_key_variable(version: int) -> str:
    """Return the environment variable that holds master key ``version``."""
    return MASTER_KEY_ENV if version == 1 else f"{MASTER_KEY_ENV}_V{version}"


def master_keys_from_env(env: Mapping[str, str]) -> dict[int, str]:
    """Collect master keys by version from environment-style variables.

    ``FAMILIAR_MASTER_KEY`` is version 1 and ``FAMILIAR_MASTER_KEY_V{N}``
    (N >= 2) is version N. Empty values count as unset.

    Raises:
        VaultKeyError: a variable name has a bad version (``_V1``, ``_V0``,
            out of range); the message names the variable, never its value.
    """
    keys: dict[int, str] = {}
    for name, value in env.items():
        if not value:
            continue
        if name == MASTER_KEY_ENV:
            keys[1] = value
            continue
        match = _VERSIONED_ENV.match(name)
        if match is None:
            continue
        version = int(match.group(1))
        if version < 2 or version > MAX_KEY_VERSION:
            raise VaultKeyError(
                f"{name} is not a valid master key variable: use {MASTER_KEY_ENV} for "
                f"version 1 and {MASTER_KEY_ENV}_V2 .. _V{MAX_KEY_VERSION} for later versions"
            )
        keys[version] = value
    return keys


def derive_keys(master_keys: Mapping[int, str]) -> dict[int, Fernet]:
    """Derive one Fernet key per master key version (HKDF-SHA256, see module doc).

    Raises:
        VaultKeyError: a version is not an int in 1..9999, or a master key is
            shorter than :data:`MIN_MASTER_KEY_CHARS` (names the variable).
    """
    fernets: dict[int, Fernet] = {}
    for version, master in master_keys.items():
        if isinstance(version, bool) or not isinstance(version, int):
            raise VaultKeyError("master key versions must be integers")
        if not 1 <= version <= MAX_KEY_VERSION:
            raise VaultKeyError(
                f"master key version {version} is out of range 1..{MAX_KEY_VERSION}"
            )
        if len(master) < MIN_MASTER_KEY_CHARS:
            raise VaultKeyError(
                f"{master_key_variable(version)} is too short: use at least "
                f"{MIN_MASTER_KEY_CHARS} characters (a random 32-byte string is best)"
            )
        hkdf = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=VAULT_HKDF_SALT, info=VAULT_HKDF_INFO
        )
        key = hkdf.derive(master.encode("utf-8"))
        fernets[version] = Fernet(base64.urlsafe_b64encode(key))
    return fernets


def _check_name(name: str) -> None:
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"secret names must be 1..{MAX_NAME_CHARS} printable characters")


class Vault:
    """Secrets encrypted at rest in a :class:`Database`.

    Reads are safe to cancel. Writes complete even if the caller is
    cancelled (see :meth:`Database.transaction`).
    """

    def __init__(self, db: Database, master_keys: Mapping[int, str]) -> None:
        """Derive the keys.

        Raises:
            VaultKeyError: no master key, a bad version, or a key too short.
        """
        if not master_keys:
            raise VaultKeyError(
                f"no master key configured: set {MASTER_KEY_ENV} to a random string of at "
                f"least {MIN_MASTER_KEY_CHARS} characters"
            )
        self._db = db
        self._fernets = derive_keys(master_keys)
        self._newest = max(self._fernets)

    @property
    def newest_version(self) -> int:
        """The key version new and rotated secrets are encrypted with."""
        return self._newest

    async def put(self, name: str, value: str) -> None:
        """Store (or replace) a secret, encrypted with the newest key version.

        Raises:
            ValueError: bad name, or value longer than :data:`MAX_SECRET_CHARS`.
            StorageError: the write failed.
        """
        _check_name(name)
        if len(value) > MAX_SECRET_CHARS:
            raise ValueError(f"secret values must be at most {MAX_SECRET_CHARS} characters")
        token = self._encrypt(name, value)
        await self._db.execute(
            "INSERT INTO vault_secrets (name, key_version, ciphertext, updated_at_us) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "key_version = excluded.key_version, ciphertext = excluded.ciphertext, "
            "updated_at_us = excluded.updated_at_us",
            (name, self._newest, token, to_epoch_us(datetime.now(UTC))),
            what="vault.put",
        )
        log.info("vault_secret_stored", name=name, key_version=self._newest)

    async def get(self, name: str) -> str | None:
        """Return a secret's value, or None if there is no such secret.

        Raises:
            VaultKeyError: the row's key version is not configured, or its key
                does not open the ciphertext (wrong master key).
            VaultError: the ciphertext belongs to another name (tampering).
            StorageError: the read failed.
        """
        rows = await self._db.fetchall(
            "SELECT key_version, ciphertext FROM vault_secrets WHERE name = ?",
            (name,),
            what="vault.get",
        )
        if not rows:
            return None
        version, token = rows[0]
        return self._decrypt(name, int(version), bytes(token))

    async def delete(self, name: str) -> bool:
        """Delete a secret; return True if it existed."""
        changed = await self._db.execute(
            "DELETE FROM vault_secrets WHERE name = ?", (name,), what="vault.delete"
        )
        if changed:
            log.info("vault_secret_deleted", name=name)
        return changed > 0

    async def names(self) -> list[str]:
        """Return the names of every stored secret, sorted."""
        rows = await self._db.fetchall(
            "SELECT name FROM vault_secrets ORDER BY name", what="vault.names"
        )
        return [str(row[0]) for row in rows]

    async def rotate(self) -> int:
        """Re-encrypt every secret not on the newest key version, in one transaction.

        Either every such secret is re-encrypted or none is: if any row
        cannot be decrypted, nothing changes. Afterwards older master keys
        can be removed from the configuration.

        Returns:
            The number of secrets re-encrypted.

        Raises:
            VaultKeyError: a row's version is not configured or its key is wrong.
            StorageError: the write failed.
        """

        async def body(conn: aiosqlite.Connection) -> int:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT name, key_version, ciphertext FROM vault_secrets "
                    "WHERE key_version != ?",
                    (self._newest,),
                )
            )
            updates = [
                (
                    self._newest,
                    self._encrypt(name, self._decrypt(name, int(version), bytes(token))),
                    name,
                )
                for name, version, token in rows
            ]
            await conn.executemany(
                "UPDATE vault_secrets SET key_version = ?, ciphertext = ? WHERE name = ?",
                updates,
            )
            return len(updates)

        changed = await self._db.transaction(body, what="vault.rotate")
        log.info("vault_rotated", secrets=changed, key_version=self._newest)
        return changed

    async def audit(self) -> dict[int, int]:
        """Return how many secrets each key version encrypts (``{version: count}``)."""
        rows = await self._db.fetchall(
            "SELECT key_version, count(*) FROM vault_secrets GROUP BY key_version",
            what="vault.audit",
        )
        return {int(version): int(count) for version, count in rows}

    def _encrypt(self, name: str, value: str) -> bytes:
        payload = name.encode("utf-8") + b"\x00" + value.encode("utf-8")
        return self._fernets[self._newest].encrypt(payload)

    def _decrypt(self, name: str, version: int, token: bytes) -> str:
        fernet = self._fernets.get(version)
        if fernet is None:
            raise VaultKeyError(
                f"secret {name!r} is encrypted with key version {version}, which is not "
                f"configured (set {master_key_variable(version)})"
            )
        try:
            payload = fernet.decrypt(token)
        except InvalidToken:
            # from None: the cryptography exception carries nothing useful and
            # we keep the chain free of key material by construction.
            raise VaultKeyError(
                f"secret {name!r}: key version {version} ({master_key_variable(version)}) "
                "does not open its ciphertext; is the master key right?"
            ) from None
        stored_name, sep, value = payload.partition(b"\x00")
        if not sep or stored_name != name.encode("utf-8"):
            raise VaultError(f"secret {name!r}: the ciphertext belongs to another secret")
        return value.decode("utf-8")
