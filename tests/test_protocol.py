"""The wire format: what decodes, and how every flaw is reported.

A flaw raises ``ProtocolError`` whose ``code`` picks the broker's error reply and whose
message names the problem, so the peer that sent it can tell what went wrong.
"""
from __future__ import annotations

import time
import tracemalloc
from typing import Any

import msgpack
import pytest

from shoal import protocol as P
from shoal.errors import ProtocolError, ShoalError


def decode_error(frames: list[bytes], max_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES) -> ProtocolError:
    """The ProtocolError that decoding ``frames`` raises (fails the test if it decodes)."""
    with pytest.raises(ProtocolError) as info:
        P.decode(frames, max_bytes)
    return info.value


def field_error(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        P.field(body, name, kind)
    return info.value


# --- round trip ------------------------------------------------------------------------
def test_encode_makes_three_frames_version_command_body() -> None:
    frames = P.encode(P.STATS, {"rid": 7})
    assert len(frames) == 3
    assert frames[0] == P.VERSION
    assert frames[1] == P.STATS
    assert msgpack.unpackb(frames[2]) == {"rid": 7}


def test_decode_returns_what_encode_was_given() -> None:
    body = {"rid": 1, "jobs": [{"id": b"\x01" * 16, "wf": "send-email", "payload": b"\x80", "priority": -3}],
            "nested": {"text": "héllo", "none": None, "float": 1.5, "flag": True}}
    command, decoded = P.decode(P.encode(P.ENQUEUE, body))
    assert command == P.ENQUEUE
    assert decoded == body


def test_bytes_and_text_stay_distinct_through_a_round_trip() -> None:
    _, decoded = P.decode(P.encode(P.GET, {"rid": 1, "ids": [b"raw", "text"]}))
    assert decoded["ids"] == [b"raw", "text"]
    assert isinstance(decoded["ids"][0], bytes) and isinstance(decoded["ids"][1], str)


@pytest.mark.parametrize("command", sorted(P.KNOWN_COMMANDS))
def test_every_known_command_round_trips(command: bytes) -> None:
    assert P.decode(P.encode(command, {})) == (command, {})


def test_a_body_exactly_at_the_limit_is_accepted() -> None:
    frames = P.encode(P.ENQUEUE, {"rid": 1, "blob": b"x" * 100})
    command, body = P.decode(frames, max_bytes=len(frames[2]))
    assert command == P.ENQUEUE and body["blob"] == b"x" * 100


def test_protocol_error_is_a_shoal_error_carrying_what_was_received() -> None:
    err = decode_error([b"SHOAL0", P.STATS, P.pack({})])
    assert isinstance(err, ShoalError)
    assert err.received == b"SHOAL0"
    assert err.reason == str(err)


# --- every flaw of a message --------------------------------------------------------------
@pytest.mark.parametrize("frames", [
    [],
    [P.VERSION],
    [P.VERSION, P.STATS],
    [P.VERSION, P.STATS, P.pack({}), b"extra"],
], ids=["0", "1", "2", "4"])
def test_wrong_frame_count_is_a_protocol_error_naming_the_count(frames: list[bytes]) -> None:
    err = decode_error(frames)
    assert err.code == P.E_PROTOCOL
    assert "expected 3 frames" in err.reason
    assert f"got {len(frames)}" in err.reason


def test_unknown_version_is_a_protocol_error_naming_both_versions() -> None:
    err = decode_error([b"SHOAL9", P.STATS, P.pack({"rid": 1})])
    assert err.code == P.E_PROTOCOL
    assert "unknown protocol version" in err.reason
    assert "SHOAL9" in err.reason and "SHOAL1" in err.reason


def test_unknown_command_is_a_protocol_error_naming_the_command() -> None:
    err = decode_error([P.VERSION, b"LAUNCH", P.pack({"rid": 1})])
    assert err.code == P.E_PROTOCOL
    assert "unknown command" in err.reason and "LAUNCH" in err.reason


def test_a_huge_unknown_command_is_shown_truncated() -> None:
    err = decode_error([P.VERSION, b"Z" * 100_000, P.pack({})])
    assert "unknown command" in err.reason
    assert len(err.reason) < 200


def test_malformed_msgpack_is_a_protocol_error_naming_the_command() -> None:
    err = decode_error([P.VERSION, P.ENQUEUE, b"\xc1 definitely not msgpack"])
    assert err.code == P.E_PROTOCOL
    assert "malformed msgpack body for ENQUEUE" in err.reason


def test_truncated_msgpack_is_a_protocol_error() -> None:
    whole = P.pack({"rid": 1, "jobs": ["a", "b", "c"]})
    err = decode_error([P.VERSION, P.ENQUEUE, whole[:-3]])
    assert err.code == P.E_PROTOCOL
    assert "malformed msgpack" in err.reason


def test_trailing_bytes_after_the_body_are_a_protocol_error() -> None:
    err = decode_error([P.VERSION, P.STATS, P.pack({"rid": 1}) + b"\x00"])
    assert err.code == P.E_PROTOCOL
    assert "malformed msgpack" in err.reason


def test_an_extension_type_is_refused() -> None:
    body = P.pack({"x": msgpack.ExtType(5, b"payload")})
    err = decode_error([P.VERSION, P.STATS, body])
    assert err.code == P.E_PROTOCOL
    assert "malformed msgpack" in err.reason


@pytest.mark.parametrize("value, type_name", [([1, 2], "list"), ("text", "str"), (3, "int"), (None, "NoneType")])
def test_a_body_that_is_not_a_map_is_a_protocol_error_naming_its_type(value: Any, type_name: str) -> None:
    err = decode_error([P.VERSION, P.STATS, P.pack(value)])
    assert err.code == P.E_PROTOCOL
    assert "must be a map" in err.reason
    assert type_name in err.reason


def test_a_body_over_the_limit_is_too_large_naming_size_and_limit() -> None:
    frames = P.encode(P.ENQUEUE, {"rid": 1, "blob": b"x" * 200})
    size = len(frames[2])
    err = decode_error(frames, max_bytes=100)
    assert err.code == P.E_TOO_LARGE
    assert f"{size} bytes" in err.reason and "limit of 100 bytes" in err.reason


def test_the_size_limit_is_checked_before_the_body_is_parsed() -> None:
    # garbage and too big: the cheap check wins, so an oversized body is never parsed
    err = decode_error([P.VERSION, P.ENQUEUE, b"\xc1" * 500], max_bytes=100)
    assert err.code == P.E_TOO_LARGE


# --- decoding is bounded ---------------------------------------------------------------
@pytest.mark.parametrize("header", [
    b"\xdd\xff\xff\xff\xff",   # array32 of 4 billion items
    b"\xdf\xff\xff\xff\xff",   # map32 of 4 billion pairs
    b"\xc6\xff\xff\xff\xff",   # bin32 of 4 GiB
    b"\xdb\xff\xff\xff\xff",   # str32 of 4 GiB
], ids=["array32", "map32", "bin32", "str32"])
def test_a_header_claiming_a_huge_container_fails_fast_without_allocating(header: bytes) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        err = decode_error([P.VERSION, P.HELLO, header])
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.code == P.E_PROTOCOL
    assert "malformed msgpack" in err.reason
    assert elapsed < 0.5
    assert peak < 1_000_000


def test_a_small_body_of_nested_array_headers_cannot_make_the_decoder_allocate_much() -> None:
    body = b"\xdd\x00\xff\xff\xff" * 1000   # 1000 nested arrays, each claiming 16 million items
    tracemalloc.start()
    try:
        err = decode_error([P.VERSION, P.HELLO, body])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.code == P.E_PROTOCOL
    assert peak < 100 * len(body)


# --- field() ---------------------------------------------------------------------------
def test_field_returns_a_present_value_of_the_right_type() -> None:
    assert P.field({"slots": 4}, "slots", int) == 4
    assert P.field({"id": b"x"}, "id", (bytes, str)) == b"x"


def test_field_missing_without_default_is_bad_request_naming_the_field() -> None:
    err = field_error({"rid": 1}, "jobs", list)
    assert err.code == P.E_BAD_REQUEST
    assert "missing field 'jobs'" in err.reason


def test_field_missing_with_default_returns_the_default() -> None:
    assert P.field({}, "priority", int, 0) == 0
    assert P.field({}, "group", str, None) is None


def test_field_null_with_default_returns_the_default() -> None:
    assert P.field({"priority": None}, "priority", int, 0) == 0


def test_field_null_without_default_is_a_wrong_type() -> None:
    err = field_error({"slots": None}, "slots", int)
    assert err.code == P.E_BAD_REQUEST
    assert "NoneType" in err.reason


def test_field_of_the_wrong_type_is_bad_request_naming_field_expected_and_found() -> None:
    err = field_error({"slots": "four"}, "slots", int)
    assert err.code == P.E_BAD_REQUEST
    assert "field 'slots' must be int, got str" in err.reason


def test_field_wrong_type_with_a_default_is_still_an_error() -> None:
    with pytest.raises(ProtocolError) as info:
        P.field({"priority": "high"}, "priority", int, 0)
    assert info.value.code == P.E_BAD_REQUEST
    assert "'priority'" in info.value.reason


def test_field_with_several_accepted_types_names_them_all() -> None:
    err = field_error({"id": 16}, "id", (bytes, str))
    assert "must be bytes or str, got int" in err.reason


def test_field_bool_is_not_an_int() -> None:
    err = field_error({"slots": True}, "slots", int)
    assert err.code == P.E_BAD_REQUEST
    assert "field 'slots' must be int, got bool" in err.reason


def test_field_bool_is_accepted_where_bool_is_asked() -> None:
    assert P.field({"all": True}, "all", bool) is True
