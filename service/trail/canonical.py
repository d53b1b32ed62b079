"""RFC 8785 JSON Canonicalization (JCS) for the trail's values, refusing what has no exact form.

The values the trail hashes hold strings, integers, booleans, null, objects and arrays.
Floats, integers beyond ±(2**53 - 1) and lone surrogates are refused (CanonicalError), not
guessed at: docs/trail.md says why. `reference_jcs` is RFC 8785 written out in Python;
Python's C JSON encoder writes the same bytes for the values `plain` accepts, much faster.
"""

import json
from collections.abc import Mapping, Sequence
from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
from typing import Any

# JCS writes numbers as IEEE 754 doubles; past 2**53 an integer would not survive that.
MAX_SAFE_INTEGER = 2**53 - 1


class CanonicalError(ValueError):
    """A value that has no canonical form in the trail's JSON (a float, a naive time, ...)."""


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of value; floats, unsafe integers and lone surrogates refused."""
    return utf8(encode(value) if plain(value) else reference_jcs(value))


def utf8(text: str) -> bytes:
    """text in UTF-8; a lone surrogate (which has no UTF-8 form) is a CanonicalError."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        msg = "a string holds a lone surrogate, which has no UTF-8 form"
        raise CanonicalError(msg) from None


# For values plain() accepts, Python's JSON encoder writes exactly what JCS does (key order
# included, since no key holds a character above U+FFFF), at C speed. The encoder function
# is made once: JSONEncoder.encode builds a new one on every call.
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, check_circular=False
)
_C_ENCODER = (
    c_make_encoder(None, _ENCODER.default, c_encode_basestring, None, ":", ",", True, False, True)
    if c_make_encoder is not None and c_encode_basestring is not None
    else None
)


def encode(value: Any) -> str:
    """value as compact JSON with sorted keys: JCS, for values plain() accepts."""
    if _C_ENCODER is not None:
        return "".join(_C_ENCODER(value, 0))
    return _ENCODER.encode(value)


def plain(value: Any) -> bool:
    """True when value holds nothing but JSON types JCS and json.dumps write alike."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return True
    if kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return True
        msg = f"integer {value} is beyond ±(2**53 - 1), which JSON numbers cannot hold exactly"
        raise CanonicalError(msg)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not (key.isascii() or max(key) <= "\uffff"):
                return False
            if type(item) is not str and not plain(item):
                return False
        return True
    if kind is list or kind is tuple:
        return all(type(item) is str or plain(item) for item in value)
    if kind is float:
        msg = f"number {value!r} is a float: the trail's rows hold only integers"
        raise CanonicalError(msg)
    return False


def reference_jcs(value: Any) -> str:
    """RFC 8785 in plain Python: the reference the fast encoding must equal."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            msg = f"integer {value} is beyond ±(2**53 - 1), which JSON numbers cannot hold exactly"
            raise CanonicalError(msg)
        return str(int(value))
    if isinstance(value, float):
        msg = f"number {value!r} is a float: the trail's rows hold only integers"
        raise CanonicalError(msg)
    if isinstance(value, str):
        return _jcs_string(value)
    if isinstance(value, Mapping):
        members = {}
        for key, item in value.items():
            if not isinstance(key, str):
                msg = f"object key {key!r} is not a string"
                raise CanonicalError(msg)
            members[key] = f"{_jcs_string(key)}:{reference_jcs(item)}"
        # JCS orders keys by their UTF-16 code units, not by code points.
        keys = sorted(members, key=lambda key: key.encode("utf-16-be"))
        return "{" + ",".join(members[key] for key in keys) + "}"
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return "[" + ",".join(reference_jcs(item) for item in value) + "]"
    msg = f"a {type(value).__name__} has no JSON form"
    raise CanonicalError(msg)


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n"}
_SHORT_ESCAPES |= {"\f": "\\f", "\r": "\\r"}


def _jcs_string(text: str) -> str:
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif code < 0x20:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            msg = "a string holds a lone surrogate, which has no UTF-8 form"
            raise CanonicalError(msg)
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _float_refused(text: str) -> float:
    msg = f"number {text} is not an integer: the trail's rows hold only integers"
    raise CanonicalError(msg)


def _safe_integer(text: str) -> int:
    value = int(text)
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        msg = f"integer {value} is beyond ±(2**53 - 1), which JSON numbers cannot hold exactly"
        raise CanonicalError(msg)
    return value


# Parses JSON text refusing what canonical_json refuses: floats and unsafe integers.
STRICT_JSON = json.JSONDecoder(
    parse_float=_float_refused, parse_int=_safe_integer, parse_constant=_float_refused
)
