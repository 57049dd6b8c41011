"""API keys: their format, how they are hashed, and how a presented key is checked.

A key is `crl_` + 40 base62 characters of randomness (238 bits) + a 6-character base62 CRC32
of those 40. The prefix lets secret scanners (GitHub's, trufflehog, gitleaks) recognise a
leaked key; the checksum lets them, and the gateway, tell a key from a random string without
asking anyone, so a garbage `Authorization` header never reaches the key store.

Only a key's SHA-256 is stored, with a short display prefix (`crl_AbCd1234`) so people can
tell their keys apart. A slow salted hash (bcrypt, argon2) protects guessable passwords; a
238-bit random key cannot be guessed, so one SHA-256 is as strong and costs microseconds on
every request (GitHub and Stripe store tokens the same way). Lookups go by hash, and the one
key compared directly (the operator's `CORRAL_ADMIN_KEY`) is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import zlib

PREFIX = "crl_"
BODY_LENGTH = 40
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH
DISPLAY_LENGTH = len(PREFIX) + 8
# Operators may bring their own admin key (`CORRAL_ADMIN_KEY`): any string at least this long.
MIN_OPERATOR_KEY_LENGTH = 32

_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def generate_key() -> str:
    """A new random key in Corral's format."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(BODY_LENGTH))
    return f"{PREFIX}{body}{_checksum(body)}"


def is_well_formed(key: str) -> bool:
    """Whether `key` has Corral's format and a correct checksum (a typo or a foreign string
    does not)."""
    if len(key) != KEY_LENGTH or not key.startswith(PREFIX):
        return False
    body = key[len(PREFIX) : len(PREFIX) + BODY_LENGTH]
    if any(ch not in _ALPHABET for ch in key[len(PREFIX) :]):
        return False
    return hmac.compare_digest(key[-CHECKSUM_LENGTH:], _checksum(body))


def key_hash(key: str) -> str:
    """What is stored and looked up: the key's SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def display_prefix(key: str) -> str:
    """The part of a key that may be shown and logged (`crl_AbCd1234`)."""
    return key[:DISPLAY_LENGTH]


def same_secret(presented: str, expected: str) -> bool:
    """Constant-time comparison of two secrets of any length (digests are compared, so
    neither the content nor the length leaks through timing)."""
    return hmac.compare_digest(key_hash(presented), key_hash(expected))
