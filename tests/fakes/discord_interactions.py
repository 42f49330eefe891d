"""The fake Discord's REST routes for application commands and interaction answers.

:class:`InteractionApi` adds to a :class:`~tests.fakes.discord_rest.DiscordRest`:

* ``GET``/``PUT /applications/{app}/commands`` and
  ``/applications/{app}/guilds/{gid}/commands``: bulk sync echoes the array
  with ``id`` (kept across re-syncs of a name), ``application_id`` and
  ``version``; what was synced is what ``FakeDiscord.slash`` can invoke;
* ``POST /interactions/{id}/{token}/callback?with_response=1``: answers
  ``{"interaction": {...}, "resource": {"type", "message"?}}`` as discord.py
  2.7 requires (a bare 204 breaks ``send_message``); JSON or multipart;
* ``POST /webhooks/{app}/{token}`` (follow-ups) and
  ``GET``/``PATCH``/``DELETE /webhooks/{app}/{token}/messages/{@original|id}``.

Discord's rules the fake enforces: one callback per interaction (40060), no
follow-up or original edit before the callback (10015 Unknown Webhook),
optionally the acknowledgement deadline (10062 Unknown interaction). Each
accepted answer is recorded as an
:class:`~tests.fakes.discord_rest.InteractionCallback`.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tests.fakes.discord_rest import (
    ApiAnswer,
    ApiError,
    ApiRequest,
    DiscordRest,
    RestCall,
    Route,
    SentFile,
)
from tests.fakes.discord_world import (
    MESSAGE_FLAG_EPHEMERAL,
    MESSAGE_FLAG_LOADING,
    FakeChannel,
    InteractionRecord,
)

__all__ = ["InteractionApi", "InteractionCallback"]

CALLBACK_PONG = 1
CALLBACK_CHANNEL_MESSAGE = 4
CALLBACK_DEFERRED_CHANNEL_MESSAGE = 5
CALLBACK_DEFERRED_UPDATE_MESSAGE = 6
CALLBACK_UPDATE_MESSAGE = 7
CALLBACK_AUTOCOMPLETE_RESULT = 8
CALLBACK_MODAL = 9
CALLBACK_LAUNCH_ACTIVITY = 12
_CALLBACKS_WITHOUT_RESOURCE = (CALLBACK_PONG, CALLBACK_MODAL, CALLBACK_LAUNCH_ACTIVITY)
_KNOWN_CALLBACKS = (
    CALLBACK_PONG,
    CALLBACK_CHANNEL_MESSAGE,
    CALLBACK_DEFERRED_CHANNEL_MESSAGE,
    CALLBACK_DEFERRED_UPDATE_MESSAGE,
    CALLBACK_UPDATE_MESSAGE,
    CALLBACK_AUTOCOMPLETE_RESULT,
    CALLBACK_MODAL,
    CALLBACK_LAUNCH_ACTIVITY,
)
_MAX_COMMANDS = 200


@dataclass(frozen=True, slots=True)
class InteractionCallback:
    """The bot's answer to an interaction (callback or follow-up), decoded.

    Attributes:
        interaction_id: the interaction answered.
        kind: ``"callback"``, ``"followup"``, ``"edit_original"``,
            ``"edit_followup"``, ``"delete_original"`` or ``"delete_followup"``.
        type: the callback type (4 message, 5 deferred, 6 deferred update,
            7 update, 9 modal); ``None`` for follow-ups and edits.
        data: the callback's ``data`` (or the follow-up/edit body).
        flags: ``data["flags"]`` (64 is ephemeral), 0 when absent.
        components: ``data["components"]``.
        files: uploaded files.
        message: the message created or updated, if any.
        call: the REST call it came from.
    """

    interaction_id: int
    kind: str
    type: int | None
    data: Mapping[str, Any]
    flags: int
    components: list[Any]
    files: tuple[SentFile, ...]
    message: dict[str, Any] | None
    call: RestCall

    @property
    def ephemeral(self) -> bool:
        """Whether the ephemeral flag (64) is set."""
        return bool(self.flags & MESSAGE_FLAG_EPHEMERAL)

    @property
    def content(self) -> str | None:
        """``data["content"]``."""
        return self.data.get("content")


class InteractionApi:
    """Application-command and interaction routes over a :class:`DiscordRest`.

    Args:
        rest: the REST API whose world, message helpers and recording it uses.
        ack_deadline_s: when set, callbacks later than this after the
            interaction was sent get 404 "Unknown interaction" (Discord's is
            3 s); ``None`` disables the check.
        max_recorded: bound of :attr:`callbacks`.
    """

    def __init__(
        self,
        rest: DiscordRest,
        *,
        ack_deadline_s: float | None = None,
        max_recorded: int = 10_000,
    ) -> None:
        self.rest = rest
        self.world = rest.world
        self.ack_deadline_s = ack_deadline_s
        self._callbacks: collections.deque[InteractionCallback] = collections.deque(
            maxlen=max_recorded
        )
        ident = r"(\d+)"
        token = r"([^/]+)"
        rest.add_routes(
            [
                Route("GET", rf"/applications/{ident}/commands", "get_global_commands", self._get_commands),
                Route("PUT", rf"/applications/{ident}/commands", "sync_global_commands", self._put_commands),
                Route("GET", rf"/applications/{ident}/guilds/{ident}/commands", "get_guild_commands", self._get_commands),
                Route("PUT", rf"/applications/{ident}/guilds/{ident}/commands", "sync_guild_commands", self._put_commands),
                # Interaction tokens authorise these; discord.py sends no bot token.
                Route("POST", rf"/interactions/{ident}/{token}/callback", "interaction_callback", self._callback, auth=False),
                Route("POST", rf"/webhooks/{ident}/{token}", "followup", self._followup, auth=False),
                Route("GET", rf"/webhooks/{ident}/{token}/messages/{token}", "get_webhook_message", self._webhook_message, auth=False),
                Route("PATCH", rf"/webhooks/{ident}/{token}/messages/{token}", "edit_webhook_message", self._webhook_message, auth=False),
                Route("DELETE", rf"/webhooks/{ident}/{token}/messages/{token}", "delete_webhook_message", self._webhook_message, auth=False),
            ]
        )  # fmt: skip

    @property
    def callbacks(self) -> list[InteractionCallback]:
        """Every accepted interaction answer (callback, follow-up, edit, delete), oldest first."""
        return list(self._callbacks)

    def _answer(
        self,
        status: int,
        body: Any,
        *,
        record: InteractionRecord,
        kind: str,
        callback_type: int | None,
        message: dict[str, Any] | None,
    ) -> ApiAnswer:
        """An answer that also records an :class:`InteractionCallback` once logged."""

        def on_recorded(call: RestCall) -> None:
            data = _callback_data(kind, call.json)
            self._callbacks.append(
                InteractionCallback(
                    interaction_id=record.id,
                    kind=kind,
                    type=callback_type,
                    data=data,
                    flags=int(data.get("flags") or 0),
                    components=list(data.get("components") or []),
                    files=call.files,
                    message=message,
                    call=call,
                )
            )

        return ApiAnswer(status, body, on_recorded=on_recorded)

    # -- application commands ----------------------------------------------

    def _check_application(self, application_id: str) -> None:
        if int(application_id) != self.world.application_id:
            raise ApiError(403, 50001, "Missing Access")

    async def _get_commands(
        self, req: ApiRequest, application_id: str, guild_id: str | None = None
    ) -> ApiAnswer:
        self._check_application(application_id)
        key = int(guild_id) if guild_id is not None else None
        return ApiAnswer(200, self.world.commands.get(key, []))

    async def _put_commands(
        self, req: ApiRequest, application_id: str, guild_id: str | None = None
    ) -> ApiAnswer:
        self._check_application(application_id)
        key = int(guild_id) if guild_id is not None else None
        if key is not None and key not in self.world.guilds:
            raise ApiError(403, 50001, "Missing Access")
        if not isinstance(req.json, list) or len(req.json) > _MAX_COMMANDS:
            raise ApiError(400, 50035, "Invalid Form Body")
        previous = {c["name"]: c for c in self.world.commands.get(key, [])}
        synced = []
        for command in req.json:
            entry = dict(command)
            old = previous.get(entry.get("name"))
            # Discord keeps a command's id across re-syncs of the same name.
            entry["id"] = old["id"] if old else str(self.world.new_id())
            entry["application_id"] = str(self.world.application_id)
            entry["version"] = str(self.world.new_id())
            entry.setdefault("type", 1)
            entry.setdefault("description", "")
            entry.setdefault("default_member_permissions", None)
            entry.setdefault("nsfw", False)
            if key is not None:
                entry["guild_id"] = str(key)
            synced.append(entry)
        self.world.commands[key] = synced
        return ApiAnswer(200, synced)

    # -- lookups -----------------------------------------------------------

    def _interaction(self, interaction_id: str, token: str) -> InteractionRecord:
        record = self.world.interactions.get(int(interaction_id))
        if record is None or record.token != token:
            raise ApiError(404, 10062, "Unknown interaction")
        return record

    def _webhook_interaction(self, application_id: str, token: str) -> InteractionRecord:
        if int(application_id) != self.world.application_id:
            raise ApiError(404, 10015, "Unknown Webhook")
        record = self.world.interaction_by_token(token)
        # Follow-ups only work once the interaction has been acknowledged.
        if record is None or record.callback_type is None:
            raise ApiError(404, 10015, "Unknown Webhook")
        return record

    def _channel(self, record: InteractionRecord) -> FakeChannel:
        channel = self.world.channel(int(record.payload["channel_id"]))
        if channel is None:
            raise ApiError(404, 10003, "Unknown Channel")
        return channel

    # -- callback ----------------------------------------------------------

    async def _callback(self, req: ApiRequest, interaction_id: str, token: str) -> ApiAnswer:
        record = self._interaction(interaction_id, token)
        if self.ack_deadline_s is not None and (
            time.monotonic_ns() - record.created_ns > self.ack_deadline_s * 1e9
        ):
            raise ApiError(404, 10062, "Unknown interaction")
        if record.callback_type is not None:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        body = req.json if isinstance(req.json, dict) else {}
        ctype = int(body.get("type", 0))
        if ctype not in _KNOWN_CALLBACKS:
            raise ApiError(400, 50035, "Invalid Form Body")
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        flags = int(data.get("flags") or 0)
        message: dict[str, Any] | None = None
        if ctype == CALLBACK_CHANNEL_MESSAGE:
            message = self.rest.bot_message(
                self._channel(record), data, req.files, flags=flags, interaction=record
            )
        elif ctype == CALLBACK_DEFERRED_CHANNEL_MESSAGE:
            # The "thinking..." placeholder; editing @original completes it.
            message = self.rest.bot_message(
                self._channel(record),
                {},
                (),
                flags=(flags & MESSAGE_FLAG_EPHEMERAL) | MESSAGE_FLAG_LOADING,
                interaction=record,
                allow_empty=True,
            )
        elif ctype == CALLBACK_UPDATE_MESSAGE:
            target = record.payload.get("message")
            message = self.world.message(int(target["id"])) if target else None
            if message is None:
                raise ApiError(400, 50035, "Invalid Form Body")
            self.rest.apply_edit(message, data, req.files)
        record.callback_type = ctype
        interaction: dict[str, Any] = {
            "id": str(record.id),
            "type": record.payload["type"],
            "response_message_loading": ctype == CALLBACK_DEFERRED_CHANNEL_MESSAGE,
            "response_message_ephemeral": bool(flags & MESSAGE_FLAG_EPHEMERAL),
        }
        if message is not None:
            record.original_message_id = int(message["id"])
            interaction["response_message_id"] = message["id"]
            if ctype == CALLBACK_UPDATE_MESSAGE:
                await self.rest.echo("MESSAGE_UPDATE", message)
            else:
                self.world.store_message(message)
                await self.rest.echo("MESSAGE_CREATE", message)
        answer: dict[str, Any] = {"interaction": interaction}
        if ctype not in _CALLBACKS_WITHOUT_RESOURCE:
            resource: dict[str, Any] = {"type": ctype}
            # Discord returns the message only for types 4 and 7.
            if message is not None and ctype in (CALLBACK_CHANNEL_MESSAGE, CALLBACK_UPDATE_MESSAGE):
                resource["message"] = message
            answer["resource"] = resource
        return self._answer(
            200, answer, record=record, kind="callback", callback_type=ctype, message=message
        )

    # -- webhooks ----------------------------------------------------------

    async def _followup(self, req: ApiRequest, application_id: str, token: str) -> ApiAnswer:
        record = self._webhook_interaction(application_id, token)
        body = req.json if isinstance(req.json, dict) else {}
        message = self.rest.bot_message(
            self._channel(record),
            body,
            req.files,
            flags=int(body.get("flags") or 0),
            interaction=record,
        )
        self.world.store_message(message)
        await self.rest.echo("MESSAGE_CREATE", message)
        wait = req.query.get("wait", "false").lower() in ("1", "true")
        return self._answer(
            200 if wait else 204,
            message if wait else None,
            record=record,
            kind="followup",
            callback_type=None,
            message=message,
        )

    async def _webhook_message(
        self, req: ApiRequest, application_id: str, token: str, message_ref: str
    ) -> ApiAnswer:
        record = self._webhook_interaction(application_id, token)
        original = message_ref == "@original"
        if original:
            if record.original_message_id is None:
                raise ApiError(404, 10008, "Unknown Message")
            message_id = record.original_message_id
        elif message_ref.isdigit():
            message_id = int(message_ref)
        else:
            raise ApiError(404, 10008, "Unknown Message")
        message = self.world.message(message_id)
        if message is None:
            raise ApiError(404, 10008, "Unknown Message")
        if req.method == "GET":
            return ApiAnswer(200, message)
        target = "original" if original else "followup"
        if req.method == "DELETE":
            self.world.delete_message(message_id)
            await self.rest.echo("MESSAGE_DELETE", message)
            return self._answer(
                204,
                None,
                record=record,
                kind=f"delete_{target}",
                callback_type=None,
                message=message,
            )
        body = req.json if isinstance(req.json, dict) else {}
        self.rest.apply_edit(message, body, req.files)
        await self.rest.echo("MESSAGE_UPDATE", message)
        return self._answer(
            200, message, record=record, kind=f"edit_{target}", callback_type=None, message=message
        )


def _callback_data(kind: str, body: Any) -> dict[str, Any]:
    """What a test asserts on: a callback's ``data``, or a follow-up's / edit's whole body."""
    if not isinstance(body, dict):
        return {}
    if kind == "callback":
        data = body.get("data")
        return dict(data) if isinstance(data, dict) else {}
    return dict(body)
