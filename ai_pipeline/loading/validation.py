"""What the loader accepts: batch names, a file's columns, and every rule a row must pass.

This is the one place for the rules. Each refusal carries a stable short code (`Reason`: scripts and
tests match on it, so never rename one) and a message for people naming the column and the value.

Rows are checked in this order and the first failing rule is reported:

    text       every value we load is valid UTF-8 and free of NUL characters (Postgres refuses both)
    user_id    present and well formed (USER_ID_PATTERN)
    model      in the catalogue and enabled
    request    exactly one of `prompt` (non-blank, <= MAX_PROMPT_CHARS) or `input` (a JSON object,
               <= MAX_INPUT_BYTES as stored)
    external_id  optional; <= MAX_EXTERNAL_ID_CHARS, not blank, not starting with the loader's prefix
    priority   optional whole number (default 0)

Rules that need the whole file (an external_id repeated on a later row) or the database (an
external_id already used by a different request) are applied by the loader with the same codes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ai_pipeline.canonical import canonical_json
from ai_pipeline.catalogue import ModelSpec
from ai_pipeline.db.batches import BATCH_NAME_PATTERN
from ai_pipeline.loading.errors import LoadError

USER_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}")
MAX_PROMPT_CHARS = 10_000
MAX_INPUT_BYTES = 64 * 1024
MAX_EXTERNAL_ID_CHARS = 200
# Keys the loader makes for rows without an external_id start with this (see keys.py).
GENERATED_KEY_PREFIX = "load:"
PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1  # Postgres `integer`

REQUIRED_COLUMNS = ("user_id", "model")
REQUEST_COLUMNS = ("prompt", "input")  # a file needs at least one; a row exactly one
OPTIONAL_COLUMNS = ("external_id", "priority")
KNOWN_COLUMNS = (*REQUIRED_COLUMNS, *REQUEST_COLUMNS, *OPTIONAL_COLUMNS)


class Reason(StrEnum):
    """Why a row was refused. The values are stable codes written to rejects files and summaries."""

    MALFORMED_ROW = "malformed_row"
    INVALID_UTF8 = "invalid_utf8"
    NUL_BYTE = "nul_byte"
    INVALID_USER_ID = "invalid_user_id"
    UNKNOWN_MODEL = "unknown_model"
    MODEL_DISABLED = "model_disabled"
    BOTH_PROMPT_AND_INPUT = "both_prompt_and_input"
    NO_PROMPT_OR_INPUT = "no_prompt_or_input"
    EMPTY_PROMPT = "empty_prompt"
    PROMPT_NOT_TEXT = "prompt_not_text"
    PROMPT_TOO_LONG = "prompt_too_long"
    INVALID_INPUT_JSON = "invalid_input_json"
    INPUT_NOT_OBJECT = "input_not_object"
    INPUT_TOO_LARGE = "input_too_large"
    INVALID_EXTERNAL_ID = "invalid_external_id"
    EXTERNAL_ID_TOO_LONG = "external_id_too_long"
    DUPLICATE_EXTERNAL_ID = "duplicate_external_id"
    EXTERNAL_ID_TAKEN = "external_id_taken"
    INVALID_PRIORITY = "invalid_priority"

    @property
    def description(self) -> str:
        """What the rule asks for, in words."""
        return REASON_DESCRIPTIONS[self]


REASON_DESCRIPTIONS: dict[Reason, str] = {
    Reason.MALFORMED_ROW: "the row could not be parsed (wrong number of CSV fields, a JSONL line that is "
    "not a JSON object)",
    Reason.INVALID_UTF8: "text must be valid UTF-8",
    Reason.NUL_BYTE: "text must not contain NUL characters",
    Reason.INVALID_USER_ID: "user_id must be 1-128 letters, digits or _ . @ : -, starting with a letter "
    "or digit",
    Reason.UNKNOWN_MODEL: "model must name a model in the catalogue",
    Reason.MODEL_DISABLED: "model must be enabled in the catalogue",
    Reason.BOTH_PROMPT_AND_INPUT: "give a prompt or an input, not both",
    Reason.NO_PROMPT_OR_INPUT: "give a prompt or an input",
    Reason.EMPTY_PROMPT: "prompt must not be blank",
    Reason.PROMPT_NOT_TEXT: "prompt must be text",
    Reason.PROMPT_TOO_LONG: f"prompt must be at most {MAX_PROMPT_CHARS:,} characters",
    Reason.INVALID_INPUT_JSON: "input must be valid JSON (finite numbers only)",
    Reason.INPUT_NOT_OBJECT: "input must be a JSON object",
    Reason.INPUT_TOO_LARGE: f"input must be at most {MAX_INPUT_BYTES:,} bytes of JSON",
    Reason.INVALID_EXTERNAL_ID: f"external_id must be non-blank text not starting with "
    f"{GENERATED_KEY_PREFIX!r}",
    Reason.EXTERNAL_ID_TOO_LONG: f"external_id must be at most {MAX_EXTERNAL_ID_CHARS} characters",
    Reason.DUPLICATE_EXTERNAL_ID: "an external_id may appear on one row of a file only",
    Reason.EXTERNAL_ID_TAKEN: "external_id already names a different request",
    Reason.INVALID_PRIORITY: "priority must be a whole number",
}


class Refusal(Exception):
    """A row broke a rule: the rule's code and a message naming what was wrong."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(slots=True)
class AcceptedRow:
    """A row that passed every row rule, in the shape it will be stored."""

    number: int
    user_id: str
    model: str
    input_json: str  # canonical JSON text of the input object
    external_id: str | None  # as given in the file; None when the loader must make a key
    priority: int


def validate_batch_name(batch: str) -> None:
    """Raise `LoadError` unless `batch` is a usable batch name."""
    if not isinstance(batch, str) or not BATCH_NAME_PATTERN.fullmatch(batch):
        raise LoadError(
            f"invalid batch name {batch!r}: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def check_columns(columns: Sequence[str]) -> None:
    """Raise `LoadError` if a file's columns cannot make requests (other columns are ignored)."""
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    if duplicated:
        raise LoadError(f"the file repeats column(s) {', '.join(duplicated)}")
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if not any(name in columns for name in REQUEST_COLUMNS):
        missing.append("prompt or input")
    if missing:
        found = ", ".join(columns) if columns else "none"
        raise LoadError(f"the file is missing required column(s): {', '.join(missing)} (found: {found})")


def given_external_id(values: Mapping[str, Any]) -> str | None:
    """The external_id a row gives, as text, or None when it gives none."""
    value = values.get("external_id")
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) else None


def well_formed_external_id(values: Mapping[str, Any]) -> str | None:
    """The row's external_id if a request could be stored under it, else None (for duplicate checks)."""
    try:
        _check_text("external_id", values.get("external_id"))
        return _external_id(values)
    except Refusal:
        return None


def validate_row(
    number: int, values: Mapping[str, Any], catalogue: Mapping[str, ModelSpec]
) -> AcceptedRow | Refusal:
    """Check one row against every row rule; return it ready to store, or the first rule it broke.

    `values` maps the loader's columns to what the file held: text (CSV), or JSON / Parquet values; a
    value that is None, missing or "" counts as not given. `catalogue` includes disabled models.
    """
    try:
        for column, value in values.items():
            if isinstance(value, str) and not (value.isascii() and "\x00" not in value):
                _check_text(column, value)
        return AcceptedRow(
            number=number,
            user_id=_user_id(values.get("user_id")),
            model=_model(values.get("model"), catalogue),
            input_json=_request_input(values.get("prompt"), values.get("input")),
            external_id=_external_id(values),
            priority=_priority(values.get("priority")),
        )
    except Refusal as refusal:
        return refusal


# --- the rules, one function per column --------------------------------------------------------------

# Invalid UTF-8 bytes reach us as lone surrogates (readers decode with errors="surrogateescape"), and
# JSON text may spell one as a \ud800 escape: either way the text cannot be stored.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(column: str, value: Any) -> None:
    if not isinstance(value, str) or (value.isascii() and "\x00" not in value):
        return
    if _SURROGATE.search(value):
        raise Refusal(Reason.INVALID_UTF8, f"{column} is not valid UTF-8")
    if "\x00" in value:
        raise Refusal(Reason.NUL_BYTE, f"{column} contains a NUL character")


def _user_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None or value == "":
        raise Refusal(Reason.INVALID_USER_ID, "user_id is missing")
    if not isinstance(value, str) or not USER_ID_PATTERN.fullmatch(value):
        raise Refusal(Reason.INVALID_USER_ID, f"user_id {_show(value)} is not well formed")
    return value


def _model(value: Any, catalogue: Mapping[str, ModelSpec]) -> str:
    if value is None or value == "":
        raise Refusal(Reason.UNKNOWN_MODEL, "model is missing")
    if not isinstance(value, str) or (spec := catalogue.get(value)) is None:
        raise Refusal(Reason.UNKNOWN_MODEL, f"model {_show(value)} is not in the catalogue")
    if not spec.enabled:
        raise Refusal(Reason.MODEL_DISABLED, f"model {_show(value)} is disabled in the catalogue")
    return value


def _request_input(prompt: Any, input_value: Any) -> str:
    """The canonical JSON of the row's input: `{"prompt": prompt}` or the given object."""
    # "" is how CSV says "not given"; a whitespace-only input is no input either.
    prompt_given = prompt is not None and prompt != ""
    input_given = input_value is not None and not (isinstance(input_value, str) and not input_value.strip())
    if prompt_given and input_given:
        raise Refusal(Reason.BOTH_PROMPT_AND_INPUT, "row has both a prompt and an input; give one")
    if input_given:
        return _input_json(input_value)
    if not prompt_given:
        if prompt == "" and input_value is None:  # the file's only request column, left empty
            raise Refusal(Reason.EMPTY_PROMPT, "prompt is empty")
        raise Refusal(Reason.NO_PROMPT_OR_INPUT, "row has neither a prompt nor an input")
    if not isinstance(prompt, str):
        raise Refusal(Reason.PROMPT_NOT_TEXT, f"prompt must be text, got {_json_kind(prompt)}")
    if not prompt.strip():
        raise Refusal(Reason.EMPTY_PROMPT, "prompt is blank")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise Refusal(
            Reason.PROMPT_TOO_LONG, f"prompt is {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}"
        )
    return _canonical_json({"prompt": prompt})


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _input_json(value: Any) -> str:
    if isinstance(value, str):
        if len(value) > 16 * MAX_INPUT_BYTES:  # far too large whatever its whitespace; don't parse it
            raise Refusal(Reason.INPUT_TOO_LARGE, f"input is {len(value):,} characters of JSON")
        try:
            value = json.loads(value, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise Refusal(Reason.INVALID_INPUT_JSON, f"input is not valid JSON: {_short(exc)}") from None
    if not isinstance(value, dict):
        raise Refusal(Reason.INPUT_NOT_OBJECT, f"input must be a JSON object, got {_json_kind(value)}")
    return _canonical_json(value)


def _canonical_json(obj: dict[str, Any]) -> str:
    """One spelling per object (sorted keys, no spaces), checked for what Postgres `jsonb` refuses."""
    try:
        text = canonical_json(obj)
    except ValueError:
        raise Refusal(Reason.INVALID_INPUT_JSON, "input holds a number that is not finite") from None
    except (TypeError, RecursionError) as exc:
        raise Refusal(
            Reason.INVALID_INPUT_JSON, f"input holds a value JSON cannot hold: {_short(exc)}"
        ) from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise Refusal(Reason.INVALID_UTF8, "input holds text that is not valid UTF-8") from None
    if size > MAX_INPUT_BYTES:
        raise Refusal(
            Reason.INPUT_TOO_LARGE, f"input is {size:,} bytes of JSON; the limit is {MAX_INPUT_BYTES:,}"
        )
    # json.dumps spells a NUL as \u0000; only a walk tells it from the six characters "\u0000".
    if "\\u0000" in text and _holds_nul(obj):
        raise Refusal(Reason.NUL_BYTE, "input contains a NUL character")
    return text


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def _external_id(values: Mapping[str, Any]) -> str | None:
    raw = values.get("external_id")
    value = given_external_id(values)
    if value is None:
        if raw is None or raw == "":
            return None
        raise Refusal(Reason.INVALID_EXTERNAL_ID, f"external_id must be text, got {type(raw).__name__}")
    if len(value) > MAX_EXTERNAL_ID_CHARS:
        raise Refusal(
            Reason.EXTERNAL_ID_TOO_LONG,
            f"external_id is {len(value):,} characters; the limit is {MAX_EXTERNAL_ID_CHARS}",
        )
    if not value.strip():
        raise Refusal(Reason.INVALID_EXTERNAL_ID, "external_id is blank")
    if value.startswith(GENERATED_KEY_PREFIX):
        raise Refusal(
            Reason.INVALID_EXTERNAL_ID,
            f"external_id may not start with {GENERATED_KEY_PREFIX!r} (kept for keys the loader makes)",
        )
    return value


_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")


def _priority(value: Any) -> int:
    if value is None or value == "":
        return 0
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)  # Parquet writers turn integer columns with gaps into floats
    elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        number = int(value.strip())
    if number is None:
        raise Refusal(Reason.INVALID_PRIORITY, f"priority {_show(value)} is not a whole number")
    if not PRIORITY_MIN <= number <= PRIORITY_MAX:
        raise Refusal(Reason.INVALID_PRIORITY, f"priority {number} is out of range")
    return number


# --- message helpers -----------------------------------------------------------------------------------


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(exc: BaseException) -> str:
    return _show(str(exc), 120).strip("'\"")


_JSON_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"),
    ((int, float), "a number"),
    (str, "a string"),
    (list, "a list"),
    (type(None), "null"),
)


def _json_kind(value: Any) -> str:
    for kind, name in _JSON_KINDS:
        if isinstance(value, kind):
            return name
    return type(value).__name__
