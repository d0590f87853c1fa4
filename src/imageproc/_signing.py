"""API keys and signed URLs for the HTTP adapter, with no web framework in sight.

* :func:`parse_api_keys` reads the ``owner:key`` pairs of ``IMAGEPROC_API_KEYS``;
  :class:`ApiKeys` finds the owner of a presented key in constant time.
* :func:`parse_max_priorities` reads the ``owner:N`` pairs of ``IMAGEPROC_MAX_PRIORITY``, the
  highest priority each owner's uploads may ask for.
* :func:`key_bits` estimates how hard a key is to guess, and :func:`weak_keys` names the keys
  estimated under :data:`MIN_KEY_BITS`, which the configuration and the HTTP adapter refuse.
* :class:`UrlSigner` signs a storage key with an expiry (HMAC-SHA256) and verifies it, accepting
  every configured signing key so that keys can be rotated without breaking URLs already handed out.
  Only the one spelling :meth:`UrlSigner.sign` writes verifies (:func:`parse_expires` reads the
  expiry the same way), so a signed URL cannot be rewritten into another URL for the same image.

Kept apart from :mod:`imageproc.http._app` so the CLI and configuration can validate keys without
importing Starlette, and so the cryptography is tested on its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from typing import Final

__all__ = [
    "ANY_OWNER",
    "MIN_KEY_BITS",
    "PRIORITY_RANGE",
    "ApiKeys",
    "UrlSigner",
    "key_bits",
    "parse_api_keys",
    "parse_expires",
    "parse_max_priorities",
    "weak_keys",
]

#: The prefix of a key given by its SHA-256 rather than in clear.
HASH_PREFIX: Final = "sha256:"
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")
# Owners end up in logs and task records: printable ASCII without spaces, ':' or ','.
_OWNER: Final = re.compile(r"[A-Za-z0-9._@+-]{1,128}")
# Keys travel in an Authorization header: visible ASCII without ',' (the pair separator).
_KEY: Final = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,512}")
# What sign() writes: 32 bytes of URL-safe base64 without padding. The decoder alone would also
# take padding, characters outside the alphabet and other values of the last character's two
# unused bits, so one signature could be written many ways (many cache keys, one image).
_SIGNATURE: Final = re.compile(r"[A-Za-z0-9_-]{43}")
# A Unix time as str(int) writes it: ASCII digits, no sign, no leading zero; 12 digits reach
# past the year 30000.
_EXPIRES: Final = re.compile(r"[1-9][0-9]{0,11}")


def parse_api_keys(text: str) -> dict[str, str]:
    """Parse ``"alice:k1,bob:sha256:<64 hex digits>"`` into ``{"alice": "k1", "bob": "sha256:…"}``.

    Pairs are separated by commas (spaces around them are ignored); each pair is the owner, a
    colon, and the key in clear or as ``sha256:`` and its hex digest. Blank text means no keys.
    Raises :class:`ValueError` naming the bad pair (never echoing a key) for an empty owner or
    key, characters outside the allowed sets, a malformed digest, or a repeated owner or key.
    """
    result: dict[str, str] = {}
    seen: set[str] = set()
    if not text.strip():
        return result
    for number, raw in enumerate(text.split(","), start=1):
        pair = raw.strip()
        owner, colon, key = pair.partition(":")
        where = f"API key pair {number}"
        if not colon:
            raise ValueError(f"{where} must be written owner:key")
        if not _OWNER.fullmatch(owner):
            raise ValueError(f"{where}: the owner must be 1-128 ASCII letters, digits or . _ @ + -")
        if key.startswith(HASH_PREFIX):
            digest = key.removeprefix(HASH_PREFIX)
            if not _HEX64.fullmatch(digest):
                raise ValueError(f"{where} ({owner}): sha256: must be followed by 64 hex digits")
            key = HASH_PREFIX + digest.lower()
        elif not _KEY.fullmatch(key):
            raise ValueError(
                f"{where} ({owner}): the key must be 1-512 visible ASCII characters other than ','"
            )
        if owner in result:
            raise ValueError(f"{where}: owner {owner!r} is listed twice")
        if _digest(key) in seen:
            raise ValueError(f"{where} ({owner}): the same key is given to two owners")
        seen.add(_digest(key))
        result[owner] = key
    return result


#: Priorities an HTTP client may ask for; beyond this a single client could starve everyone else.
PRIORITY_RANGE: Final = range(-1000, 1001)
#: The owner ``parse_max_priorities`` gives every owner it does not name (and, without API keys,
#: every client).
ANY_OWNER: Final = "*"
_PRIORITY: Final = re.compile(r"-?[0-9]{1,4}")


def parse_max_priorities(text: str) -> dict[str, int]:
    """Parse ``"alice:1000,bob:0,*:10"`` into ``{"alice": 1000, "bob": 0, "*": 10}``: the
    highest priority each owner's uploads may ask for.

    ``*`` (:data:`ANY_OWNER`) stands for every owner not named. Each maximum is a whole number
    in ASCII digits within :data:`PRIORITY_RANGE`. Blank text means no maximum beyond the range.
    Raises :class:`ValueError` naming the bad pair.
    """
    result: dict[str, int] = {}
    if not text.strip():
        return result
    for number, raw in enumerate(text.split(","), start=1):
        owner, colon, value = raw.strip().partition(":")
        where = f"priority pair {number}"
        if not colon:
            raise ValueError(f"{where} must be written owner:N")
        if owner != ANY_OWNER and not _OWNER.fullmatch(owner):
            raise ValueError(
                f"{where}: the owner must be * or 1-128 ASCII letters, digits or . _ @ + -"
            )
        if not _PRIORITY.fullmatch(value) or int(value) not in PRIORITY_RANGE:
            raise ValueError(
                f"{where} ({owner}): the maximum must be a whole number from"
                f" {PRIORITY_RANGE.start} to {PRIORITY_RANGE.stop - 1}, got {value!r}"
            )
        if owner in result:
            raise ValueError(f"{where}: owner {owner!r} is listed twice")
        result[owner] = int(value)
    return result


#: The least a key must be estimated to hold, in bits (:func:`key_bits`): what 16 random bytes
#: hold, out of reach of guessing however many requests are made.
MIN_KEY_BITS: Final = 128
#: A key with fewer different characters than this is weak whatever its length ("aaaa…"): a
#: random key long enough to pass has more, but for once in billions.
MIN_DISTINCT_CHARACTERS: Final = 6
_HEX_DIGITS: Final = frozenset(string.hexdigits)
# The character classes a key's alphabet is judged by, with their sizes; anything else (other
# punctuation, and any non-ASCII character) counts as the 30 other visible ASCII punctuation
# marks, so that an unusual character never makes a short key look strong.
_CLASSES: Final = (
    (frozenset(string.digits), 10),
    (frozenset(string.ascii_lowercase), 26),
    (frozenset(string.ascii_uppercase), 26),
    (frozenset("-_"), 2),
)
_OTHER_CLASS: Final = 30


def key_bits(key: str | bytes) -> float:
    """A deliberately simple, conservative estimate of how many bits of guessing ``key`` holds:
    its length times log2 of the size of the alphabet it appears to be drawn from.

    The alphabet is 16 characters if the key is all hex digits; otherwise the sum of the classes
    it uses (10 digits, 26 lower-case letters, 26 upper-case letters, 2 for ``-`` and ``_``, 30
    for any other character). A key of fewer than :data:`MIN_DISTINCT_CHARACTERS` different
    characters counts 0. So 32 hex digits (``openssl rand -hex 16``) make 128 bits, and so do
    22 characters of letters of both cases and digits (``secrets.token_urlsafe(32)``, 43 such
    characters, is well over). It cannot see a pattern or a dictionary word: it catches short
    and narrow keys, not a key chosen to fool it. Bytes are read as Latin-1.
    """
    text = key.decode("latin-1") if isinstance(key, bytes) else key
    distinct = set(text)
    if len(distinct) < MIN_DISTINCT_CHARACTERS:
        return 0.0
    if distinct <= _HEX_DIGITS:
        alphabet = 16
    else:
        alphabet = sum(size for members, size in _CLASSES if distinct & members)
        if any(not any(c in members for members, _ in _CLASSES) for c in distinct):
            alphabet += _OTHER_CLASS
    return len(text) * math.log2(alphabet)


def weak_keys(
    api_keys: Mapping[str, str] | None = None, signing_keys: Sequence[str | bytes] = ()
) -> list[str]:
    """What is weak among ``api_keys`` (owner → key) and ``signing_keys``: one phrase each,
    such as ``"the API key of 'alice'"`` or ``"signing key 2"``, naming the key but never
    showing it. Empty when every key is estimated (:func:`key_bits`) at :data:`MIN_KEY_BITS` or
    more. An API key given as ``sha256:<hex>`` always passes: the digest hides the key behind
    it, which cannot be judged.
    """
    weak = [
        f"the API key of {owner!r}"
        for owner, key in (api_keys or {}).items()
        if not key.startswith(HASH_PREFIX) and key_bits(key) < MIN_KEY_BITS
    ]
    weak += [
        f"signing key {number}"
        for number, key in enumerate(signing_keys, start=1)
        if key_bits(key) < MIN_KEY_BITS
    ]
    return weak


#: How to make a key that passes, for the messages that refuse one.
STRONG_KEY_HINT: Final = (
    f"at least {MIN_KEY_BITS} bits are needed, such as 32 hex digits or 22 mixed-case letters"
    " and digits: make one with `openssl rand -hex 32`"
)


def _digest(key: str) -> str:
    """The hex SHA-256 a key is compared by (a ``sha256:`` key already is one)."""
    if key.startswith(HASH_PREFIX):
        return key.removeprefix(HASH_PREFIX).lower()
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """Who a presented API key belongs to.

    Every key is kept as its SHA-256 and a presented key is hashed and compared with each of them
    using :func:`hmac.compare_digest`, without stopping at the first match, so the time taken says
    nothing about which key (or how much of one) was right.
    """

    def __init__(self, keys: Mapping[str, str]) -> None:
        for owner, key in keys.items():
            # Checked here too, for mappings that did not come through parse_api_keys: a
            # mistyped digest would otherwise lock its owner out without a word.
            if not key:
                raise ValueError(f"the API key of {owner!r} is empty")
            if key.startswith(HASH_PREFIX) and not _HEX64.fullmatch(key[len(HASH_PREFIX) :]):
                raise ValueError(
                    f"the API key of {owner!r}: sha256: must be followed by 64 hex digits"
                )
        self._digests: list[tuple[bytes, str]] = [
            (_digest(key).encode(), owner) for owner, key in keys.items()
        ]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def owner_of_authorization(self, header: str) -> str | None:
        """The owner of the key in an ``Authorization`` header's value (``Bearer <key>``), or
        None if it holds no configured key."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.owner_of(token.strip())

    def owner_of(self, presented: str) -> str | None:
        """The owner of ``presented``, or None if it is no configured key."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).hexdigest().encode()
        found: str | None = None
        for expected, owner in self._digests:
            if hmac.compare_digest(digest, expected):
                found = owner
        return found


def parse_expires(text: str) -> int | None:
    """The Unix time an ``expires`` parameter holds, or None unless it is written exactly as a
    signed URL writes it (ASCII digits, no sign, no leading zero, at most 12 digits)."""
    return int(text) if _EXPIRES.fullmatch(text) else None


class UrlSigner:
    """Sign and verify ``(storage key, expiry)`` pairs with HMAC-SHA256.

    The first signing key signs; every one verifies, so a new key can be put first while URLs
    signed with the old one stay valid until the old key is dropped. With no keys, a random key
    is made (URLs then stop working when the process restarts, and differ between processes).
    The signature is URL-safe base64 without padding, and only that exact text verifies.
    """

    def __init__(self, keys: Sequence[str | bytes] = ()) -> None:
        secrets_ = [k.encode() if isinstance(k, str) else bytes(k) for k in keys]
        if any(not k for k in secrets_):
            raise ValueError("a signing key must not be empty")
        self._keys = secrets_ or [secrets.token_bytes(32)]

    @staticmethod
    def _mac(secret: bytes, key: str, expires: int) -> bytes:
        # A NUL cannot occur in a valid storage key, so "key\0expires" has one reading only.
        message = f"{key}\0{expires}".encode()
        return hmac.new(secret, message, hashlib.sha256).digest()

    def sign(self, key: str, expires: int) -> str:
        """The signature of ``key`` valid until the Unix time ``expires``."""
        return self._text(self._mac(self._keys[0], key, expires)).decode()

    @staticmethod
    def _text(mac: bytes) -> bytes:
        return base64.urlsafe_b64encode(mac).rstrip(b"=")

    def verify(self, key: str, expires: int, signature: str, *, now: float) -> bool:
        """Whether ``signature`` signs ``key`` until ``expires`` and ``now`` is not past it.

        ``signature`` must be exactly what :meth:`sign` wrote: the text is compared, not the
        bytes it decodes to.
        """
        if expires < now or not _SIGNATURE.fullmatch(signature):
            return False
        presented = signature.encode("ascii")
        valid = False
        for secret in self._keys:
            # Check every key rather than stop at a match: timing says nothing about which.
            if hmac.compare_digest(presented, self._text(self._mac(secret, key, expires))):
                valid = True
        return valid
