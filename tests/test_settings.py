"""Settings: environment and .env in, validated values or one readable error out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from familiar_connect.errors import ConfigError
from familiar_connect.settings import (
    ENDPOINT_FIELDS,
    SECRET_FIELDS,
    Settings,
    env_file_warning,
    load_settings,
)

REPO = Path(__file__).resolve().parents[1]


class TestLoadSettings:
    def test_defaults_point_at_real_services_over_tls(self) -> None:
        """With nothing set, every endpoint is the real service's https/wss URL."""
        settings = load_settings(env_file=None)
        for name in ENDPOINT_FIELDS:
            assert getattr(settings, name).startswith(("https://", "wss://")), name
        assert settings.familiar_id == "default"
        assert settings.familiar_data_dir == Path("./data")

    def test_every_secret_is_a_secret_str(self) -> None:
        """Each secret field is typed SecretStr, so repr never shows the value."""
        settings = load_settings(
            env_file=None, **{name: "canary-value-123456" for name in SECRET_FIELDS}
        )
        assert "canary-value-123456" not in repr(settings)
        assert "canary-value-123456" not in str(settings.model_dump())

    def test_reads_dotenv_file(self, tmp_path: Path) -> None:
        """Values come from the given .env file."""
        env = tmp_path / ".env"
        env.write_text("OPENROUTER_API_KEY=sk-or-v1-abcdef0123456789\nFAMILIAR_ID=aria\n")
        settings = load_settings(env_file=env)
        assert settings.familiar_id == "aria"
        assert settings.llm_configured

    def test_environment_wins_over_dotenv(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An environment variable overrides the same key in .env."""
        env = tmp_path / ".env"
        env.write_text("FAMILIAR_ID=fromfile\n")
        monkeypatch.setenv("FAMILIAR_ID", "fromenv")
        assert load_settings(env_file=env).familiar_id == "fromenv"

    def test_empty_values_count_as_unset(self, tmp_path: Path) -> None:
        """An empty line copied from .env.example leaves the default in place."""
        env = tmp_path / ".env"
        env.write_text("DISCORD_TOKEN=\nDASHBOARD_PORT=\n")
        settings = load_settings(env_file=env)
        assert settings.discord_token is None
        assert settings.dashboard_port == 8765

    def test_all_problems_reported_together(self) -> None:
        """Several bad variables produce one error naming each of them."""
        with pytest.raises(ConfigError) as info:
            load_settings(
                env_file=None,
                familiar_id="Not Valid",
                dashboard_port="99999",
                openrouter_base_url="ftp://x",
            )
        text = str(info.value)
        for name in ("FAMILIAR_ID", "DASHBOARD_PORT", "OPENROUTER_BASE_URL"):
            assert name in text
        assert len(info.value.problems) == 3

    def test_error_never_echoes_a_secret_value(self) -> None:
        """A malformed secret is named in the error but its value is not shown."""
        with pytest.raises(ConfigError) as info:
            load_settings(env_file=None, discord_token="Bot MTIzNDU2Nzg5.secretpart-xyz")
        assert "DISCORD_TOKEN" in str(info.value)
        assert "secretpart" not in str(info.value)

    def test_secret_pasted_into_wrong_variable_not_echoed(self) -> None:
        """A key pasted into a URL variable is rejected without printing it."""
        with pytest.raises(ConfigError) as info:
            load_settings(env_file=None, openrouter_base_url="sk-or-v1-deadbeefdeadbeef")
        assert "deadbeef" not in str(info.value)

    @pytest.mark.parametrize(
        "value", ["changeme", "<your-token-here>", "'quoted-secret-value'", "has space inside"]
    )
    def test_secret_looking_placeholders_rejected(self, value: str) -> None:
        """Placeholders, quotes and inner whitespace in a secret are configuration errors."""
        with pytest.raises(ConfigError, match="OPENROUTER_API_KEY"):
            load_settings(env_file=None, openrouter_api_key=value)

    def test_secret_surrounding_whitespace_stripped(self) -> None:
        """A trailing newline or space around a secret is removed rather than sent."""
        settings = load_settings(env_file=None, openrouter_api_key="  sk-or-v1-abc123456789\n")
        assert settings.openrouter_api_key is not None
        assert settings.openrouter_api_key.get_secret_value() == "sk-or-v1-abc123456789"

    def test_plaintext_allowed_only_for_loopback(self) -> None:
        """http:// and ws:// endpoints are accepted for 127.0.0.1 and localhost only."""
        ok = load_settings(
            env_file=None,
            openrouter_base_url="http://127.0.0.1:9999/api/v1",
            discord_gateway_url="ws://localhost:1234/gw/",
        )
        assert ok.openrouter_base_url.startswith("http://127.0.0.1")
        with pytest.raises(ConfigError, match="plaintext"):
            load_settings(env_file=None, twitch_eventsub_ws="ws://eventsub.example.com/ws")

    def test_credentials_in_url_rejected(self) -> None:
        """A URL with user:password in it is refused, and the password is not echoed."""
        with pytest.raises(ConfigError) as info:
            load_settings(env_file=None, openrouter_base_url="https://me:hunter2secret@host/v1")
        assert "hunter2secret" not in str(info.value)

    def test_id_lists_parse_commas(self) -> None:
        """Comma-separated Discord ids become a list; non-numeric ids are an error."""
        settings = load_settings(env_file=None, discord_dm_allowlist="123, 456,789")
        assert settings.discord_dm_allowlist == ["123", "456", "789"]
        with pytest.raises(ConfigError, match="DISCORD_DM_ALLOWLIST"):
            load_settings(env_file=None, discord_dm_allowlist="123,alice")

    def test_master_key_versions_collected(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """FAMILIAR_MASTER_KEY is version 1 and FAMILIAR_MASTER_KEY_V2.. come from env and .env."""
        env = tmp_path / ".env"
        env.write_text(
            "FAMILIAR_MASTER_KEY=first-key-0123456789\nFAMILIAR_MASTER_KEY_V3=third-key-0123456789\n"
        )
        monkeypatch.setenv("FAMILIAR_MASTER_KEY_V2", "second-key-0123456789")
        settings = load_settings(env_file=env)
        assert settings.master_keys() == {
            1: "first-key-0123456789",
            2: "second-key-0123456789",
            3: "third-key-0123456789",
        }
        assert "third-key-0123456789" in settings.secret_values()

    def test_versioned_key_without_base_key_rejected(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A _V2 key without FAMILIAR_MASTER_KEY is a configuration error."""
        monkeypatch.setenv("FAMILIAR_MASTER_KEY_V2", "second-key-0123456789")
        with pytest.raises(ConfigError, match="FAMILIAR_MASTER_KEY"):
            load_settings(env_file=None)

    def test_llm_configured_by_local_base_url(self) -> None:
        """A local base URL with no key counts as a configured LLM endpoint."""
        assert not load_settings(env_file=None).llm_configured
        assert load_settings(
            env_file=None, openrouter_base_url="http://127.0.0.1:8080/v1"
        ).llm_configured

    def test_familiar_dir_layout(self) -> None:
        """The familiar's directory is <data dir>/familiars/<id>."""
        settings = load_settings(env_file=None, familiar_id="aria", familiar_data_dir="/srv/fc")
        assert settings.familiar_dir == Path("/srv/fc/familiars/aria")


class TestEnvFileWarning:
    def test_warns_when_group_readable(self, tmp_path: Path) -> None:
        """A .env readable by group or others produces a warning with the chmod fix."""
        env = tmp_path / ".env"
        env.write_text("X=1\n")
        env.chmod(0o644)
        warning = env_file_warning(env)
        assert warning is not None and "chmod 600" in warning

    def test_silent_when_private(self, tmp_path: Path) -> None:
        """A .env with mode 600 produces no warning."""
        env = tmp_path / ".env"
        env.write_text("X=1\n")
        env.chmod(0o600)
        assert env_file_warning(env) is None


class TestEnvExample:
    def test_lists_every_setting_with_a_comment_and_no_value(self) -> None:
        """.env.example names every setting once, each after a comment line, all values empty."""
        lines = (REPO / ".env.example").read_text().splitlines()
        names = []
        for index, line in enumerate(lines):
            match = re.match(r"^([A-Z0-9_]+)=(.*)$", line)
            if match:
                names.append(match.group(1))
                assert match.group(2) == "", f"{match.group(1)} has a value"
                assert lines[index - 1].startswith("#"), f"{match.group(1)} has no comment"
        expected = {name.upper() for name in Settings.model_fields} - {"MASTER_KEY_VERSIONS"}
        assert expected <= set(names)
        assert len(names) == len(set(names))
