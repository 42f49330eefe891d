"""The memory writer's model output, parsed and validated.

The model is asked for one JSON object (``people``, ``topics``,
``session_summary``). :func:`parse_notes` turns its reply into
:class:`ParsedNotes` or refuses it: only speakers of the batch get people notes,
ids and slugs are restricted to safe characters (they become file names), and
counts and sizes are capped. Pure functions, no I/O.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Final

from familiar_connect.core.sanitize import cap_text, sanitize_name, strip_control

__all__ = ["ID_RE", "ParsedNotes", "Person", "Topic", "parse_notes", "slugify"]

ID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Ids that may become part of a note's file name."""
_CODE_FENCE_RE: Final = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```\s*$", re.DOTALL)
_NON_SLUG_RE: Final = re.compile(r"[^a-z0-9]+")
_MAX_SLUG_CHARS: Final = 64
_MAX_NAME_CHARS: Final = 64


@dataclass(frozen=True, slots=True)
class Person:
    """One people note from the model, validated."""

    platform: str
    user_id: str
    name: str
    notes: str


@dataclass(frozen=True, slots=True)
class Topic:
    """One topic note from the model, slugged."""

    slug: str
    notes: str


@dataclass(frozen=True, slots=True)
class ParsedNotes:
    """The model's output after :func:`parse_notes`."""

    people: tuple[Person, ...]
    topics: tuple[Topic, ...]
    session_summary: str
    rejected: int


def slugify(text: str, *, max_chars: int = _MAX_SLUG_CHARS) -> str:
    """Reduce ``text`` to ``[a-z0-9-]`` (accents folded, runs of anything else → ``-``).

    Returns an empty string when nothing is left; ``"../x"`` gives ``"x"``.
    """
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = _NON_SLUG_RE.sub("-", folded.lower()).strip("-")
    return slug[:max_chars].strip("-")


def parse_notes(
    reply: str,
    *,
    speakers: set[tuple[str, str]],
    max_people: int = 10,
    max_topics: int = 10,
    max_note_chars: int = 16_000,
    max_reply_chars: int = 400_000,
) -> ParsedNotes:
    """Parse the model's reply into validated notes.

    Accepts the object bare, inside a ````json`` code fence, or after some
    prose. Individual bad entries are dropped (counted in ``rejected``): a
    person who is not one of ``speakers`` or whose id is not
    ``[A-Za-z0-9_-]{1,64}``, a people note longer than ``max_note_chars`` (it
    replaces a whole note, so it is never cut), a topic whose slug is empty,
    entries beyond the count caps, duplicates. Topic and session text is cut
    to ``max_note_chars`` with a visible marker. Control characters are
    stripped from all text.

    Raises:
        ValueError: the reply is too long, not JSON, not an object, or a
            field has the wrong type (the whole reply is unusable).
    """
    if len(reply) > max_reply_chars:
        raise ValueError("the reply is longer than the cap")
    value = _extract_json(reply)
    if not isinstance(value, dict):
        raise ValueError("the reply is not a JSON object")
    # Absent or null means "nothing"; any other non-list is a malformed reply.
    raw_people = value.get("people") if value.get("people") is not None else []
    raw_topics = value.get("topics") if value.get("topics") is not None else []
    summary = value.get("session_summary") if value.get("session_summary") is not None else ""
    if not isinstance(raw_people, list) or not isinstance(raw_topics, list):
        raise ValueError("people and topics must be lists")
    if not isinstance(summary, str):
        raise ValueError("session_summary must be a string")
    rejected = max(0, len(raw_people) - max_people) + max(0, len(raw_topics) - max_topics)
    people: dict[tuple[str, str], Person] = {}
    for entry in raw_people[:max_people]:
        person = _person(entry, speakers, max_note_chars)
        if person is None or (person.platform, person.user_id) in people:
            rejected += 1
            continue
        people[(person.platform, person.user_id)] = person
    topics: dict[str, Topic] = {}
    for entry in raw_topics[:max_topics]:
        topic = _topic(entry, max_note_chars)
        if topic is None or topic.slug in topics:
            rejected += 1
            continue
        topics[topic.slug] = topic
    summary_text, _ = cap_text(strip_control(summary).strip(), max_chars=max_note_chars)
    return ParsedNotes(tuple(people.values()), tuple(topics.values()), summary_text, rejected)


def _extract_json(reply: str) -> object:
    text = reply.strip()
    match = _CODE_FENCE_RE.match(text)
    if match:
        text = match.group(1).strip()
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    start = text.find("{")
    if start < 0:
        raise ValueError("the reply holds no JSON object")
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):
        raise ValueError("the reply is not valid JSON") from None
    return value


def _person(entry: object, speakers: set[tuple[str, str]], max_chars: int) -> Person | None:
    if not isinstance(entry, dict):
        return None
    platform, user_id = entry.get("platform"), entry.get("user_id")
    notes, name = entry.get("notes"), entry.get("name", "")
    if not (isinstance(platform, str) and isinstance(user_id, str) and isinstance(notes, str)):
        return None
    # The id becomes part of a file name: only exact speakers of this batch qualify.
    if not ID_RE.match(user_id) or (platform, user_id) not in speakers:
        return None
    text = strip_control(notes).strip()
    if not text or len(text) > max_chars:
        return None
    clean_name = sanitize_name(name if isinstance(name, str) else "", max_chars=_MAX_NAME_CHARS)
    return Person(platform, user_id, clean_name, text)


def _topic(entry: object, max_chars: int) -> Topic | None:
    if not isinstance(entry, dict):
        return None
    slug, notes = entry.get("slug"), entry.get("notes")
    if not isinstance(slug, str) or not isinstance(notes, str):
        return None
    clean_slug = slugify(slug)
    text, _ = cap_text(strip_control(notes).strip(), max_chars=max_chars)
    if not clean_slug or not text:
        return None
    return Topic(clean_slug, text)
