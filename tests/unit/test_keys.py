"""Tests of ``_keys``: storage key rules and layout."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imageproc import InvalidKey
from imageproc._keys import (
    MAX_KEY_LENGTH,
    OWNER_DIGEST_CHARS,
    output_key,
    source_key,
    validate_key,
)

segment = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,19}", fullmatch=True)


@given(st.lists(segment, min_size=1, max_size=6))
def test_plain_relative_keys_pass(segments: list[str]) -> None:
    key = "/".join(segments)
    assert validate_key(key) == key


hostile_parts = st.sampled_from(
    [
        "..",
        ".",
        "",
        "\x00",
        "\n",
        "\x7f",
        "\\",
        "/etc/passwd",
        "a\\..\\b",
        "*",
        "a?",
        "[ab]",
        "~",
        "c:",
        ".env",
        "a b",
        "caf\u00e9",
        "\u2028",
        "\x85",
    ]
)


@given(st.lists(segment, max_size=3), hostile_parts, st.lists(segment, max_size=3))
def test_hostile_keys_are_refused(before: list[str], hostile: str, after: list[str]) -> None:
    key = "/".join([*before, hostile, *after])
    with pytest.raises(InvalidKey):
        validate_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs",
        "a//b",
        "a/",
        "../x",
        "a/../../b",
        "./a",
        "a\\b",
        "a\x00b",
        "x" * (MAX_KEY_LENGTH + 1),
        "outputs/*",
        "outputs/**/x",
        "~/x",
        "s3:/x",
        ".git/config",
        "a/%2e%2e/b",
    ],
)
def test_refused_examples(key: str) -> None:
    with pytest.raises(InvalidKey):
        validate_key(key)


def test_made_keys_are_valid_and_deterministic() -> None:
    digest = "ab" * 32
    assert source_key(digest, "jpg") == f"originals/ab/{digest}.jpg"
    assert output_key("T1", "thumb", "webp") == "outputs/T1/thumb.webp"
    validate_key(source_key(digest, "jpg"))


def test_originals_have_a_namespace_per_owner() -> None:
    digest = "ab" * 32
    alice, bob = source_key(digest, "jpg", "alice"), source_key(digest, "jpg", "bob")
    assert alice != bob
    assert alice == source_key(digest, "jpg", "alice")
    namespace = hashlib.sha256(b"alice").hexdigest()[:OWNER_DIGEST_CHARS]
    assert alice == f"originals/{namespace}/ab/{digest}.jpg"
    # No owner keeps the shared key, which no owner's key can equal (one segment fewer).
    assert source_key(digest, "jpg") not in (alice, bob, source_key(digest, "jpg", ""))
    for owner in ("alice", "", "ünïcode owner", "\ud800"):
        validate_key(source_key(digest, "jpg", owner))
