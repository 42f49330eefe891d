"""Process settings, read from the environment and ``.env``.

Every secret is a :class:`~pydantic.SecretStr`, so printing or logging the
settings object shows ``**********``. Every external endpoint is a setting
whose default is the real service (DESIGN §4.1); tests point them at loopback
fakes instead of patching code. A plaintext (``http``/``ws``) endpoint is only
accepted for a loopback host: real providers are always reached over TLS.

:func:`load_settings` turns pydantic's validation errors into one
:class:`~familiar_connect.errors.ConfigError` that names every bad variable and
why, and never echoes a value (a secret may have been pasted into the wrong
variable).
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import dotenv
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from familiar_connect.errors import ConfigError

__all__ = [
    "ENDPOINT_FIELDS",
    "SECRET_FIELDS",
    "Settings",
    "env_file_warning",
    "load_settings",
]

# Fields holding credentials. Used by the log redactor (their values are
# scrubbed from every log event) and by `familiar check` (shown as set/unset).
SECRET_FIELDS: tuple[str, ...] = (
    "discord_token",
    "openrouter_api_key",
    "deepgram_api_key",
    "cartesia_api_key",
    "azure_speech_key",
    "twitch_client_secret",
    "familiar_master_key",
    "familiar_dashboard_token",
)

# Fields holding service endpoints: TLS unless the host is loopback.
ENDPOINT_FIELDS: tuple[str, ...] = (
    "openrouter_base_url",
    "discord_api_base",
    "discord_gateway_url",
    "twitch_helix_base",
    "twitch_id_base",
    "twitch_eventsub_ws",
    "deepgram_ws_base",
    "deepgram_http_base",
    "cartesia_base_url",
    "cartesia_ws_base_url",
)

_FAMILIAR_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_MASTER_KEY_VERSION = re.compile(r"^FAMILIAR_MASTER_KEY_V(\d{1,4})$", re.IGNORECASE)
# Values people paste from templates instead of a real credential.
_PLACEHOLDERS = frozenset(
    {"changeme", "change-me", "xxx", "xxxx", "todo", "your-token-here", "your_key_here", "none"}
)
_MAX_SECRET_CHARS = 4096


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_ids(value: object) -> object:
    """Comma- or whitespace-separated ids from one environment variable."""
    if isinstance(value, str):
        return [part for part in re.split(r"[,\s]+", value.strip()) if part]
    return value


IdList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Everything the process needs from its environment.

    Field names are the environment variable names, case-insensitive
    (``openrouter_api_key`` ↔ ``OPENROUTER_API_KEY``).
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,
        hide_input_in_errors=True,
    )

    # --- the familiar and its data -------------------------------------------------
    familiar_id: str = "default"
    familiar_data_dir: Path = Path("./data")
    familiar_master_key: SecretStr | None = None
    # Extra key versions (FAMILIAR_MASTER_KEY_V2, _V3, ...) are collected by
    # load_settings, since their names are open-ended.
    master_key_versions: dict[int, SecretStr] = Field(default_factory=dict, exclude=True)
    familiar_extra_ca_file: Path | None = None

    # --- logging ------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"

    # --- LLM (OpenRouter or any OpenAI-compatible endpoint) -------------------------
    openrouter_api_key: SecretStr | None = None
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    openrouter_referer: str | None = "https://github.com/familiar-connect/familiar-connect"
    openrouter_title: str | None = "Familiar-Connect"
    llm_connect_timeout_s: float = Field(default=10.0, gt=0, le=120)
    llm_read_timeout_s: float = Field(default=60.0, gt=0, le=600)
    llm_max_retries: int = Field(default=3, ge=0, le=10)
    llm_max_connections: int = Field(default=128, ge=1, le=1024)

    # --- Discord --------------------------------------------------------------------
    discord_token: SecretStr | None = None
    discord_api_base: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"
    discord_dm_allowlist: IdList = Field(default_factory=list)
    discord_operator_ids: IdList = Field(default_factory=list)
    discord_sync_commands_globally: bool = False

    # --- Twitch ---------------------------------------------------------------------
    twitch_client_id: str | None = None
    twitch_client_secret: SecretStr | None = None
    twitch_channel: str | None = None
    twitch_bot_login: str | None = None
    twitch_helix_base: str = "https://api.twitch.tv/helix/"
    twitch_id_base: str = "https://id.twitch.tv/"
    twitch_eventsub_ws: str = "wss://eventsub.wss.twitch.tv/ws"

    # --- speech ---------------------------------------------------------------------
    stt_provider: Literal["deepgram", "azure"] | None = None
    tts_provider: Literal["cartesia", "azure"] | None = None
    deepgram_api_key: SecretStr | None = None
    deepgram_ws_base: str = "wss://api.deepgram.com"
    deepgram_http_base: str = "https://api.deepgram.com"
    cartesia_api_key: SecretStr | None = None
    cartesia_base_url: str = "https://api.cartesia.ai"
    cartesia_ws_base_url: str = "wss://api.cartesia.ai"
    azure_speech_key: SecretStr | None = None
    azure_speech_region: str | None = None
    azure_speech_host: str | None = None

    # --- dashboard ------------------------------------------------------------------
    familiar_dashboard_token: SecretStr | None = None
    dashboard_enabled: bool = True
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = Field(default=8765, ge=0, le=65535)
    dashboard_allow_remote: bool = False

    # --- validators -----------------------------------------------------------------
    @field_validator("familiar_id")
    @classmethod
    def _check_familiar_id(cls, value: str) -> str:
        if not _FAMILIAR_ID.match(value):
            raise ValueError(
                "must be 1-64 characters of lowercase letters, digits, '-' or '_', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("discord_dm_allowlist", "discord_operator_ids", mode="before")
    @classmethod
    def _parse_id_list(cls, value: object) -> object:
        return _split_ids(value)

    @field_validator("discord_dm_allowlist", "discord_operator_ids")
    @classmethod
    def _check_ids(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.isdigit() or len(item) > 20:
                raise ValueError("must be a comma-separated list of numeric Discord user ids")
        return value

    @field_validator(*SECRET_FIELDS)
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        stripped = raw.strip()
        if not stripped:
            return None
        # Messages below never include the value: it may be a real credential.
        if len(stripped) > _MAX_SECRET_CHARS:
            raise ValueError(f"is longer than {_MAX_SECRET_CHARS} characters")
        if stripped.lower().strip("<>[]{}") in _PLACEHOLDERS or stripped.startswith("<"):
            raise ValueError("still holds a placeholder from a template; paste the real value")
        if any(ch.isspace() for ch in stripped):
            raise ValueError(
                "contains whitespace; paste the bare value (no 'Bot ' or 'Bearer ' prefix)"
            )
        if stripped[0] in "'\"" or stripped[-1] in "'\"":
            raise ValueError("is wrapped in quotes inside the value; remove the quotes")
        return SecretStr(stripped)

    @field_validator(*ENDPOINT_FIELDS)
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https", "ws", "wss"} or not parts.hostname:
            raise ValueError("must be an http(s):// or ws(s):// URL with a host")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials in the URL; use the key variables")
        if parts.scheme in {"http", "ws"} and not _is_loopback(parts.hostname):
            raise ValueError(
                "uses plaintext; real providers must be reached over https/wss "
                "(plaintext is allowed only for 127.0.0.1/localhost test fakes)"
            )
        return value

    # --- derived views --------------------------------------------------------------
    @property
    def familiar_dir(self) -> Path:
        """``<data dir>/familiars/<id>``: everything this familiar owns."""
        return self.familiar_data_dir / "familiars" / self.familiar_id

    @property
    def llm_configured(self) -> bool:
        """An LLM endpoint is usable: a key, or a non-default (e.g. local) base URL."""
        default = type(self).model_fields["openrouter_base_url"].default
        return self.openrouter_api_key is not None or self.openrouter_base_url != default

    @property
    def discord_configured(self) -> bool:
        return self.discord_token is not None

    @property
    def twitch_configured(self) -> bool:
        return bool(self.twitch_client_id and self.twitch_client_secret and self.twitch_channel)

    def secret_values(self) -> list[str]:
        """Every configured secret value, for the log redactor. Never log this."""
        values: list[str] = []
        for name in SECRET_FIELDS:
            secret = getattr(self, name)
            if secret is not None:
                values.append(secret.get_secret_value())
        values.extend(s.get_secret_value() for s in self.master_key_versions.values())
        return values

    def master_keys(self) -> dict[int, str]:
        """Master key versions for the vault: 1 is FAMILIAR_MASTER_KEY, N is _V{N}."""
        keys = {v: s.get_secret_value() for v, s in self.master_key_versions.items()}
        if self.familiar_master_key is not None:
            keys[1] = self.familiar_master_key.get_secret_value()
        return dict(sorted(keys.items()))

    def secret_status(self) -> dict[str, bool]:
        """Which secrets are set, by environment variable name (values never shown)."""
        status = {name.upper(): getattr(self, name) is not None for name in SECRET_FIELDS}
        for version in sorted(self.master_key_versions):
            status[f"FAMILIAR_MASTER_KEY_V{version}"] = True
        return status


def _collect_master_key_versions(
    environ: Mapping[str, str], env_file: Path | None
) -> tuple[dict[int, SecretStr], list[str]]:
    """Find FAMILIAR_MASTER_KEY_V2.. in the environment and the .env file."""
    found: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        for key, value in dotenv.dotenv_values(env_file).items():
            if value:
                found[key] = value
    for key, value in environ.items():
        if value:
            found[key] = value
    versions: dict[int, SecretStr] = {}
    problems: list[str] = []
    for key, value in found.items():
        match = _MASTER_KEY_VERSION.match(key)
        if not match:
            continue
        version = int(match.group(1))
        if version < 2:
            problems.append(f"{key.upper()}: versions start at V2 (V1 is FAMILIAR_MASTER_KEY)")
            continue
        versions[version] = SecretStr(value.strip())
    return versions, problems


def _check_env_file_encoding(env_file: Path) -> None:
    """Refuse a dotenv file that is not UTF-8, naming the line (never echoing its bytes)."""
    try:
        data = env_file.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{env_file}: cannot be read ({exc.strerror})") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{env_file}: line {line} is not valid UTF-8 text; save the file as UTF-8"
        ) from None


def _describe_error(error: Mapping[str, Any]) -> str:
    loc = error.get("loc") or ("settings",)
    name = str(loc[0]).upper()
    message = str(error.get("msg", "is invalid"))
    message = message.removeprefix("Value error, ")
    return f"{name}: {message}"


def load_settings(
    *,
    env_file: Path | None = Path(".env"),
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build :class:`Settings`, reporting every problem at once.

    Args:
        env_file: the dotenv file to read (None reads only the environment).
        environ: the environment to scan for extra master key versions
            (defaults to ``os.environ``; pydantic-settings itself always reads
            ``os.environ``).
        **overrides: explicit values that win over the environment (tests).

    Raises:
        ConfigError: one message naming each bad variable and why.
    """
    environ = os.environ if environ is None else environ
    if env_file is not None:
        _check_env_file_encoding(env_file)
    versions, problems = _collect_master_key_versions(environ, env_file)
    try:
        settings = Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems.extend(_describe_error(err) for err in exc.errors(include_input=False))
        settings = None
    if versions and settings is not None and settings.familiar_master_key is None:
        problems.append("FAMILIAR_MASTER_KEY_V*: set FAMILIAR_MASTER_KEY (version 1) as well")
    if problems or settings is None:
        raise ConfigError(
            "The configuration is not valid. Fix these variables (in the environment or .env):",
            problems=tuple(problems),
        )
    settings.master_key_versions = versions
    return settings


def env_file_warning(env_file: Path) -> str | None:
    """A warning when ``.env`` is readable or writable by group or others, else None."""
    try:
        mode = env_file.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"{env_file} is accessible to other users (mode {stat.S_IMODE(mode):o}); "
            f"it holds secrets, run: chmod 600 {env_file}"
        )
    return None
