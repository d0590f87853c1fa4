"""API key parsing and matching, and signed URLs: properties with hypothesis, edge cases by hand."""

from __future__ import annotations

import hashlib
import string
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imageproc._signing import (
    MIN_KEY_BITS,
    ApiKeys,
    UrlSigner,
    key_bits,
    parse_api_keys,
    parse_expires,
    parse_max_priorities,
    weak_keys,
)
from tests.support.strategies import foreign_digits

owners = st.from_regex(r"[A-Za-z0-9._@+-]{1,20}", fullmatch=True)
clear_keys = st.from_regex(r"[\x21-\x2b\x2d-\x7e]{1,40}", fullmatch=True).filter(
    lambda k: not k.startswith("sha256:")
)
hashed_keys = st.binary(min_size=1, max_size=20).map(
    lambda b: "sha256:" + hashlib.sha256(b).hexdigest()
)
storage_keys = st.from_regex(
    r"(outputs|originals)/[A-Za-z0-9_-]{1,22}/[a-z]{1,8}\.[a-z]{3,4}", fullmatch=True
)


@st.composite
def key_maps(draw: st.DrawFn) -> dict[str, str]:
    names = draw(st.lists(owners, unique=True, max_size=6))
    keys = draw(
        st.lists(
            st.one_of(clear_keys, hashed_keys),
            min_size=len(names),
            max_size=len(names),
            unique_by=lambda k: k.removeprefix("sha256:"),
        )
    )
    hashed = {hashlib.sha256(k.encode()).hexdigest() for k in keys if not k.startswith("sha256:")}
    # A clear key and another owner's hash of the same key are one key twice: not a valid map.
    keys = [k for k in keys if k.removeprefix("sha256:") not in hashed or not k.startswith("sha")]
    return dict(zip(names, keys, strict=False))


@given(key_maps(), st.sampled_from([",", ", ", " , "]))
def test_parse_round_trips(mapping: dict[str, str], separator: str) -> None:
    text = separator.join(f"{owner}:{key}" for owner, key in mapping.items())
    assert parse_api_keys(text) == mapping


@given(st.text(max_size=60))
def test_parse_either_succeeds_or_raises_value_error(text: str) -> None:
    try:
        result = parse_api_keys(text)
    except ValueError as error:
        message = str(error)
        result = {}
    else:
        message = "ok"
    assert message
    assert all(owner and key for owner, key in result.items())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice", "owner:key"),
        ("alice:", "key must be"),
        (":k1", "owner must be"),
        ("al ice:k1", "owner must be"),
        ("alice:k1,alice:k2", "listed twice"),
        ("alice:k1,bob:k1", "two owners"),
        ("alice:sha256:abc", "64 hex digits"),
        ("alice:k1,,bob:k2", "owner:key"),
        ("alice:k 1", "key must be"),
    ],
)
def test_parse_refuses_bad_text_clearly(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_api_keys(text)
    # The message names the pair and the owner, never the key itself.
    assert "k1" not in str(caught.value)
    assert "k 1" not in str(caught.value)


def test_parse_blank_is_no_keys_and_digests_are_normalised() -> None:
    assert parse_api_keys("  ") == {}
    digest = hashlib.sha256(b"k").hexdigest()
    assert parse_api_keys(f" bob:sha256:{digest.upper()} ") == {"bob": f"sha256:{digest}"}
    twice = f"alice:k,bob:sha256:{digest}"
    with pytest.raises(ValueError, match="two owners"):
        parse_api_keys(twice)


@given(key_maps(), st.data())
def test_api_keys_find_the_owner(mapping: dict[str, str], data: st.DataObject) -> None:
    keys = ApiKeys(mapping)
    for owner, key in mapping.items():
        if not key.startswith("sha256:"):
            assert keys.owner_of(key) == owner
            # The digest itself is not the key.
            assert keys.owner_of("sha256:" + hashlib.sha256(key.encode()).hexdigest()) is None
    stranger = data.draw(clear_keys)
    if stranger not in mapping.values() and not any(
        k == "sha256:" + hashlib.sha256(stranger.encode()).hexdigest() for k in mapping.values()
    ):
        assert keys.owner_of(stranger) is None


def test_hashed_keys_match_their_preimage() -> None:
    keys = ApiKeys({"bob": "sha256:" + hashlib.sha256(b"secret").hexdigest()})
    assert keys.owner_of("secret") == "bob"
    assert keys.owner_of("Secret") is None
    assert keys.owner_of("\udcff") is None  # an undecodable header byte does not crash


@given(storage_keys, st.integers(min_value=1, max_value=2**40), st.binary(min_size=1, max_size=32))
def test_sign_verify_round_trip(key: str, expires: int, secret: bytes) -> None:
    signer = UrlSigner([secret])
    signature = signer.sign(key, expires)
    assert signer.verify(key, expires, signature, now=expires)
    assert not signer.verify(key, expires, signature, now=expires + 1)
    assert not signer.verify(key + "x", expires, signature, now=0)
    assert not signer.verify(key, expires + 1, signature, now=0)
    assert not UrlSigner([secret + b"!"]).verify(key, expires, signature, now=0)


@given(storage_keys, st.text(max_size=50))
def test_any_presented_signature_is_just_refused(key: str, signature: str) -> None:
    signer = UrlSigner(["k"])
    expires = int(time.time()) + 60
    if signature != signer.sign(key, expires):
        assert not signer.verify(key, expires, signature, now=time.time())


def test_rotation() -> None:
    old, both, new = UrlSigner(["old"]), UrlSigner(["new", "old"]), UrlSigner(["new"])
    signature = old.sign("outputs/t/a.png", 100)
    assert both.verify("outputs/t/a.png", 100, signature, now=0)
    assert not new.verify("outputs/t/a.png", 100, signature, now=0)
    # The first key signs.
    assert both.sign("outputs/t/a.png", 100) == new.sign("outputs/t/a.png", 100)


def test_random_key_when_none_given_and_empty_keys_refused() -> None:
    assert UrlSigner().sign("k", 1) != UrlSigner().sign("k", 1)
    with pytest.raises(ValueError, match="empty"):
        UrlSigner([""])


@pytest.mark.parametrize("key", ["", "sha256:abc", "sha256:" + "g" * 64])
def test_api_keys_refuse_unusable_keys(key: str) -> None:
    with pytest.raises(ValueError, match="alice"):
        ApiKeys({"alice": key})


_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def other_spellings(signature: str) -> list[str]:
    """Texts that a lenient base64 decoder reads as the same 32 bytes as ``signature``."""
    last = _ALPHABET.index(signature[-1])
    spellings = [
        signature + "=",
        signature + "==",
        signature + "!",
        "." + signature,
        signature[:20] + "\n" + signature[20:],
        # The last character holds two bits beyond the 256: sign() leaves them at zero.
        *(signature[:-1] + _ALPHABET[last | bits] for bits in (1, 2, 3)),
    ]
    if "-" in signature or "_" in signature:  # the standard alphabet's spelling of them
        spellings.append(signature.replace("-", "+").replace("_", "/"))
    return spellings


@given(storage_keys, st.integers(min_value=1, max_value=2**40))
def test_only_the_signers_own_spelling_verifies(key: str, expires: int) -> None:
    signer = UrlSigner(["k"])
    signature = signer.sign(key, expires)
    assert signer.verify(key, expires, signature, now=0)
    for spelling in other_spellings(signature):
        assert not signer.verify(key, expires, spelling, now=0), spelling


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1795884000", 1795884000),
        ("1", 1),
        ("01795884000", None),
        ("0", None),
        ("+1795884000", None),
        ("-1", None),
        (" 1795884000", None),
        ("1795884000 ", None),
        ("1_795_884_000", None),
        # Digits int() reads but a signer never writes: Arabic-Indic, fullwidth.
        (foreign_digits("1795884000", 0x0660), None),
        (foreign_digits("1795884000"), None),
        ("1" * 13, None),
        ("", None),
    ],
)
def test_parse_expires_reads_only_what_a_signed_url_writes(text: str, expected: int | None) -> None:
    assert parse_expires(text) == expected


def test_parse_max_priorities() -> None:
    assert parse_max_priorities("") == {}
    assert parse_max_priorities(" alice:1000, bob:-5 ,*:0") == {"alice": 1000, "bob": -5, "*": 0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice", "owner:N"),
        ("alice:", "whole number from -1000 to 1000"),
        ("alice:1001", "whole number from -1000 to 1000"),
        ("alice:-1001", "whole number from -1000 to 1000"),
        ("alice:1_0", "whole number"),
        ("alice:+5", "whole number"),
        ("alice:" + foreign_digits("5"), "whole number"),
        ("al ice:5", "owner must be"),
        ("**:5", "owner must be"),
        ("alice:1,alice:2", "listed twice"),
        ("*:1,*:2", "listed twice"),
    ],
)
def test_parse_max_priorities_refuses_bad_text_clearly(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_max_priorities(text)


# -- key strength -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "x",
        "k1",
        "change-me",
        "test-key-0123456789",  # 19 of 38 characters: 99.7 bits
        "0123456789abcdef0123456789abcde",  # 31 hex digits: 124 bits
        "a" * 200,  # long, but one character
        "abcabcabcabcabcabcabcabcabcabcabcabc",  # long, but five characters
        "correcthorsebattery",  # 19 lower-case letters: 89 bits
        b"\x00\x01" * 8,
    ],
)
def test_weak_keys_are_estimated_under_128_bits(key: str | bytes) -> None:
    assert key_bits(key) < MIN_KEY_BITS


@pytest.mark.parametrize(
    "key",
    [
        "0123456789abcdef0123456789abcdef",  # 32 hex digits: 128 bits
        "0123456789ABCDEF0123456789abcdef",
        "Abcdefghij0123456789KL",  # 22 mixed-case letters and digits: 131 bits
        "correct-horse-battery-staple-7",
    ],
)
def test_strong_keys_are_estimated_at_128_bits_or_more(key: str) -> None:
    assert key_bits(key) >= MIN_KEY_BITS


@given(st.binary(min_size=32, max_size=64))
def test_what_the_documentation_says_to_run_makes_strong_keys(random: bytes) -> None:
    # openssl rand -hex 32, secrets.token_hex(32) and secrets.token_urlsafe(32), for any bytes
    # they may give (hypothesis tries the unlucky ones, all zeros included, which no real
    # generator gives but once in 2**256).
    import base64

    if len(set(random.hex())) >= 6:
        assert key_bits(random.hex()) >= MIN_KEY_BITS
    text = base64.urlsafe_b64encode(random).rstrip(b"=").decode()
    if len(set(text)) >= 6:
        assert key_bits(text) >= MIN_KEY_BITS


def test_weak_keys_name_each_weak_key_never_showing_it() -> None:
    strong = "Abcdefghij0123456789KL"
    digest_of_a_weak_key = "sha256:" + hashlib.sha256(b"k").hexdigest()
    found = weak_keys(
        {"alice": "k1secret", "bob": strong, "carol": digest_of_a_weak_key}, ["s", strong, b"b"]
    )
    assert found == ["the API key of 'alice'", "signing key 1", "signing key 3"]
    assert not any("k1secret" in phrase for phrase in found)
    assert weak_keys() == weak_keys({}, [strong]) == []
