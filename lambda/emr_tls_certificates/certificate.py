"""A self-signed X.509 v3 certificate for an RSA key pair, in plain Python.

Takes the key pair in the form AWS KMS ``GenerateDataKeyPair`` returns it (the private key as
PKCS#8 DER, the public key as SubjectPublicKeyInfo DER), builds the RFC 5280 structures with
a minimal DER encoder and signs them with RSASSA-PKCS1-v1_5 and SHA-256 (RFC 8017) through
``pow``. The certificate names one DNS name (a wildcard such as ``*.ec2.internal``) as subject
common name and subjectAltName, is its own issuer, and is a CA (basicConstraints CA:TRUE), so
the same certificate serves as the server and client certificate and as the trusted
certificate.

Only the standard library: the Lambda bundle cannot carry binary packages. Nothing here logs,
keeps or puts key material into an exception message.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Object identifiers (dotted) of the algorithms, attributes and extensions used.
_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
_SHA256_WITH_RSA = "1.2.840.113549.1.1.11"
_SHA256 = "2.16.840.1.101.3.4.2.1"
_COMMON_NAME = "2.5.4.3"
_SUBJECT_KEY_IDENTIFIER = "2.5.29.14"
_KEY_USAGE = "2.5.29.15"
_SUBJECT_ALT_NAME = "2.5.29.17"
_BASIC_CONSTRAINTS = "2.5.29.19"
_AUTHORITY_KEY_IDENTIFIER = "2.5.29.35"
_EXTENDED_KEY_USAGE = "2.5.29.37"
_SERVER_AUTH = "1.3.6.1.5.5.7.3.1"
_CLIENT_AUTH = "1.3.6.1.5.5.7.3.2"

# DER tags (universal, and the context-specific ones RFC 5280 uses here).
_BOOLEAN = 0x01
_INTEGER = 0x02
_BIT_STRING = 0x03
_OCTET_STRING = 0x04
_NULL = 0x05
_OID = 0x06
_UTF8_STRING = 0x0C
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_SEQUENCE = 0x30
_SET = 0x31
_VERSION = 0xA0  # [0] EXPLICIT
_EXTENSIONS = 0xA3  # [3] EXPLICIT
_KEY_IDENTIFIER = 0x80  # [0] IMPLICIT OCTET STRING
_DNS_NAME = 0x82  # [2] IMPLICIT IA5String

# keyUsage digitalSignature (bit 0), keyEncipherment (2), keyCertSign (5): 1010 0100, whose
# two trailing zero bits DER marks as unused.
_KEY_USAGE_BITS = b"\x02\xa4"
_SERIAL_BITS = 159  # positive and at most 20 octets (RFC 5280 4.1.2.2)


@dataclass(frozen=True)
class RsaPrivateKey:
    """The parts of an RSA private key that signing needs."""

    modulus: int
    public_exponent: int
    private_exponent: int

    @property
    def size_bytes(self) -> int:
        return (self.modulus.bit_length() + 7) // 8


@dataclass(frozen=True)
class Certificate:
    """A signed certificate and the facts about it that are safe to report."""

    der: bytes
    serial_number: int
    not_before: datetime
    not_after: datetime

    @property
    def sha256_fingerprint(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


def self_signed_certificate(
    *,
    private_key_der: bytes,
    public_key_der: bytes,
    dns_name: str,
    validity: timedelta,
    now: datetime,
) -> Certificate:
    """Build and sign a certificate for `dns_name`, valid from `now` for `validity`.

    Raises ValueError when the keys are not an RSA pair in the expected DER forms.
    """
    key = parse_private_key(private_key_der)
    if parse_public_key(public_key_der) != (key.modulus, key.public_exponent):
        raise ValueError("the public key does not belong to the private key")
    start = now.astimezone(UTC).replace(microsecond=0)
    end = start + validity
    serial = secrets.randbits(_SERIAL_BITS - 1) | (1 << (_SERIAL_BITS - 1))
    algorithm = _sequence(_oid(_SHA256_WITH_RSA), _tlv(_NULL, b""))
    name = _sequence(
        _tlv(_SET, _sequence(_oid(_COMMON_NAME), _tlv(_UTF8_STRING, dns_name.encode())))
    )
    tbs = _sequence(
        _tlv(_VERSION, _integer(2)),
        _integer(serial),
        algorithm,
        name,
        _sequence(_time(start), _time(end)),
        name,
        public_key_der,
        _tlv(_EXTENSIONS, _sequence(*_extensions(dns_name, public_key_der))),
    )
    signature = sign_pkcs1v15_sha256(key, tbs)
    der = _sequence(tbs, algorithm, _tlv(_BIT_STRING, b"\x00" + signature))
    return Certificate(der=der, serial_number=serial, not_before=start, not_after=end)


def pem(label: str, der: bytes) -> str:
    """The PEM text of `der` under `label` (e.g. CERTIFICATE, PRIVATE KEY)."""
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode("ascii"), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def sign_pkcs1v15_sha256(key: RsaPrivateKey, message: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 signature of `message` with SHA-256 (RFC 8017 8.2.1), checked with
    the public key before it is returned, so a faulty computation never leaves this module."""
    digest_info = _sequence(
        _sequence(_oid(_SHA256), _tlv(_NULL, b"")),
        _tlv(_OCTET_STRING, hashlib.sha256(message).digest()),
    )
    size = key.size_bytes
    padding = b"\xff" * (size - len(digest_info) - 3)
    encoded = int.from_bytes(b"\x00\x01" + padding + b"\x00" + digest_info, "big")
    signature = pow(encoded, key.private_exponent, key.modulus)
    if pow(signature, key.public_exponent, key.modulus) != encoded:
        raise ValueError("the signature does not verify with the key's public exponent")
    return signature.to_bytes(size, "big")


def parse_private_key(der: bytes) -> RsaPrivateKey:
    """The RSA private key of a PKCS#8 PrivateKeyInfo (RFC 5208) holding an RSAPrivateKey."""
    info = _children(_single(der, _SEQUENCE, "PKCS#8 PrivateKeyInfo"))
    if len(info) < 3 or _as_int(info[0]) != 0:
        raise ValueError("not a version 0 PKCS#8 PrivateKeyInfo")
    _check_rsa_algorithm(info[1])
    tag, octets = info[2]
    if tag != _OCTET_STRING:
        raise ValueError("the PKCS#8 private key is not an OCTET STRING")
    fields = _children(_single(octets, _SEQUENCE, "RSAPrivateKey"))
    if len(fields) < 9 or any(tag != _INTEGER for tag, _ in fields):
        raise ValueError("not an RSAPrivateKey of nine integers")
    modulus, public_exponent, private_exponent = (_as_int(field) for field in fields[1:4])
    return RsaPrivateKey(modulus, public_exponent, private_exponent)


def parse_public_key(der: bytes) -> tuple[int, int]:
    """(modulus, public exponent) of an RSA SubjectPublicKeyInfo (RFC 5280 4.1.2.7)."""
    fields = _children(_single(der, _SEQUENCE, "SubjectPublicKeyInfo"))
    if len(fields) != 2:
        raise ValueError("not a SubjectPublicKeyInfo")
    _check_rsa_algorithm(fields[0])
    key = _public_key_bits(der)
    numbers = _children(_single(key, _SEQUENCE, "RSAPublicKey"))
    if len(numbers) != 2 or any(tag != _INTEGER for tag, _ in numbers):
        raise ValueError("not an RSAPublicKey")
    return _as_int(numbers[0]), _as_int(numbers[1])


def _extensions(dns_name: str, public_key_der: bytes) -> list[bytes]:
    key_id = hashlib.sha1(_public_key_bits(public_key_der), usedforsecurity=False).digest()
    return [
        _extension(_BASIC_CONSTRAINTS, _sequence(_tlv(_BOOLEAN, b"\xff")), critical=True),
        _extension(_KEY_USAGE, _tlv(_BIT_STRING, _KEY_USAGE_BITS), critical=True),
        _extension(_EXTENDED_KEY_USAGE, _sequence(_oid(_SERVER_AUTH), _oid(_CLIENT_AUTH))),
        _extension(_SUBJECT_ALT_NAME, _sequence(_tlv(_DNS_NAME, dns_name.encode("ascii")))),
        _extension(_SUBJECT_KEY_IDENTIFIER, _tlv(_OCTET_STRING, key_id)),
        _extension(_AUTHORITY_KEY_IDENTIFIER, _sequence(_tlv(_KEY_IDENTIFIER, key_id))),
    ]


def _extension(oid: str, value: bytes, *, critical: bool = False) -> bytes:
    flag = [_tlv(_BOOLEAN, b"\xff")] if critical else []
    return _sequence(_oid(oid), *flag, _tlv(_OCTET_STRING, value))


def _public_key_bits(spki_der: bytes) -> bytes:
    """The subjectPublicKey BIT STRING's bytes (the DER RSAPublicKey)."""
    tag, bits = _children(_single(spki_der, _SEQUENCE, "SubjectPublicKeyInfo"))[1]
    if tag != _BIT_STRING or not bits or bits[0] != 0:
        raise ValueError("the subjectPublicKey is not a whole-byte BIT STRING")
    return bits[1:]


def _check_rsa_algorithm(field: tuple[int, bytes]) -> None:
    tag, content = field
    if tag != _SEQUENCE or not content.startswith(_oid(_RSA_ENCRYPTION)):
        raise ValueError("the key is not an rsaEncryption key")


# --- DER encoding ---------------------------------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def _sequence(*items: bytes) -> bytes:
    return _tlv(_SEQUENCE, b"".join(items))


def _integer(value: int) -> bytes:
    # One byte more than the magnitude needs whenever its top bit is set keeps it positive.
    return _tlv(_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _oid(dotted: str) -> bytes:
    first, second, *rest = (int(arc) for arc in dotted.split("."))
    body = bytearray([40 * first + second])
    for arc in rest:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _tlv(_OID, bytes(body))


def _time(moment: datetime) -> bytes:
    # RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
    if moment.year < 2050:
        return _tlv(_UTC_TIME, moment.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return _tlv(_GENERALIZED_TIME, moment.strftime("%Y%m%d%H%M%SZ").encode("ascii"))


# --- DER decoding (only what the two key structures need) -----------------------------------


def _read(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """(tag, content, offset after the element) of the DER element at `offset`."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER element")
    tag, first = data[offset], data[offset + 1]
    offset += 2
    if first & 0x80:
        count = first & 0x7F
        if not 0 < count <= 4 or offset + count > len(data):
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    else:
        length = first
    end = offset + length
    if end > len(data):
        raise ValueError("truncated DER element")
    return tag, data[offset:end], end


def _single(data: bytes, tag: int, what: str) -> bytes:
    found, content, end = _read(data, 0)
    if found != tag or end != len(data):
        raise ValueError(f"not a DER {what}")
    return content


def _children(content: bytes) -> list[tuple[int, bytes]]:
    children, offset = [], 0
    while offset < len(content):
        tag, child, offset = _read(content, offset)
        children.append((tag, child))
    return children


def _as_int(field: tuple[int, bytes]) -> int:
    tag, content = field
    if tag != _INTEGER or not content:
        raise ValueError("not a DER INTEGER")
    return int.from_bytes(content, "big", signed=True)
