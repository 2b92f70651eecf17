"""Every shape of Replicate output becomes the right, ordered list of parts."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ai_pipeline.storage.output_parts import (
    JSON_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    InlineContent,
    RemoteFile,
    output_parts,
)

PNG_URL = "https://replicate.delivery/pbxt/abc/out-0.png"
PNG_BYTES = b"\x89PNG\r\n\x1a\nrest"

urls = st.builds(
    "https://replicate.delivery/{}/{}.png".format,
    st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
    st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True),
)
tokens = st.text(max_size=12).filter(lambda t: not t.lower().startswith(("http", "data:")))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | urls,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _json(value: object) -> InlineContent:
    return InlineContent(json.dumps(value, ensure_ascii=False).encode(), JSON_CONTENT_TYPE)


def test_none_has_no_parts() -> None:
    assert output_parts(None) == []


def test_url_string_is_one_file_to_fetch() -> None:
    assert output_parts(PNG_URL) == [RemoteFile(PNG_URL)]


def test_plain_http_url_is_a_file_too() -> None:
    assert output_parts("http://127.0.0.1:8787/files/a.png") == [
        RemoteFile("http://127.0.0.1:8787/files/a.png")
    ]


@given(st.lists(urls, min_size=1, max_size=8))
def test_list_of_urls_is_one_file_each_in_order(items: list[str]) -> None:
    assert output_parts(items) == [RemoteFile(url) for url in items]


@given(st.lists(tokens, min_size=1, max_size=30))
def test_list_of_tokens_is_one_text_part_joined_without_separator(items: list[str]) -> None:
    assert output_parts(items) == [InlineContent("".join(items).encode(), TEXT_CONTENT_TYPE)]


def test_tokens_that_include_a_url_stay_one_text() -> None:
    items = ["See ", PNG_URL, " for the picture."]
    assert output_parts(items) == [InlineContent("".join(items).encode(), TEXT_CONTENT_TYPE)]


def test_empty_list_has_no_parts() -> None:
    assert output_parts([]) == []


def test_plain_string_is_a_text_part() -> None:
    assert output_parts("a cat, sitting") == [InlineContent(b"a cat, sitting", TEXT_CONTENT_TYPE)]


def test_surrogate_halves_split_across_tokens_are_rejoined() -> None:
    emoji = "\U0001f600"
    halves = [chr(0xD83D), chr(0xDE00)]
    assert output_parts(halves) == [InlineContent(emoji.encode(), TEXT_CONTENT_TYPE)]


@pytest.mark.parametrize("value", [0, 42, -1.5, True, False])
def test_number_or_bool_is_a_json_part(value: object) -> None:
    assert output_parts(value) == [_json(value)]


def test_dict_gives_its_url_leaves_then_the_whole_dict_as_json() -> None:
    output = {
        "image": PNG_URL,
        "extras": {"mask": "https://replicate.delivery/x/mask.png", "score": 0.9},
        "frames": ["https://replicate.delivery/x/f1.png", "caption"],
    }
    assert output_parts(output) == [
        RemoteFile(PNG_URL),
        RemoteFile("https://replicate.delivery/x/mask.png"),
        RemoteFile("https://replicate.delivery/x/f1.png"),
        _json(output),
    ]


def test_dict_without_urls_is_one_json_part() -> None:
    assert output_parts({"label": "cat", "score": 0.93}) == [_json({"label": "cat", "score": 0.93})]


def test_list_with_non_strings_is_stored_like_a_dict() -> None:
    output = [{"url": PNG_URL}, 3]
    assert output_parts(output) == [RemoteFile(PNG_URL), _json(output)]


def test_base64_data_uri_is_its_decoded_bytes() -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG_BYTES).decode()
    assert output_parts(uri) == [InlineContent(PNG_BYTES, "image/png")]


def test_list_of_data_uris_is_one_part_each() -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG_BYTES).decode()
    assert output_parts([uri, PNG_URL]) == [InlineContent(PNG_BYTES, "image/png"), RemoteFile(PNG_URL)]


def test_percent_encoded_data_uri_without_type_is_text() -> None:
    assert output_parts("data:,Hello%2C%20World") == [InlineContent(b"Hello, World", TEXT_CONTENT_TYPE)]


def test_data_uri_inside_a_dict_is_decoded_too() -> None:
    uri = "data:audio/wav;base64," + base64.b64encode(b"RIFF").decode()
    assert output_parts({"audio": uri}) == [InlineContent(b"RIFF", "audio/wav"), _json({"audio": uri})]


def test_malformed_base64_data_uri_is_kept_as_text() -> None:
    assert output_parts("data:image/png;base64,not base64!") == [
        InlineContent(b"data:image/png;base64,not base64!", TEXT_CONTENT_TYPE)
    ]


def test_unknown_python_type_is_refused() -> None:
    with pytest.raises(TypeError):
        output_parts(object())


@given(json_values)
def test_any_json_output_gives_well_formed_parts(value: object) -> None:
    parts = output_parts(value)
    assert all(isinstance(part, RemoteFile | InlineContent) for part in parts)
    assert (value is None or value == []) == (parts == [])


@given(st.dictionaries(st.text(max_size=8), json_values, min_size=1, max_size=5))
def test_dict_json_part_is_last_and_round_trips(value: dict[str, object]) -> None:
    last = output_parts(value)[-1]
    assert isinstance(last, InlineContent)
    assert last.content_type == JSON_CONTENT_TYPE
    assert json.loads(last.content) == value
