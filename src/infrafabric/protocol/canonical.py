"""RFC 8785 JSON Canonicalization Scheme (JCS), fast and exact.

One function, :func:`canonical_json`, turns a JSON value (``dict``, ``list``, ``str``,
``int``, ``float``, ``bool``, ``None``) into its canonical UTF-8 bytes:

* no whitespace (RFC 8785 section 3.2.1);
* strings escaped minimally: ``\\"``, ``\\\\``, the short forms ``\\b \\t \\n \\f \\r``, other
  control characters as ``\\u00xx`` in lowercase hex, everything else literal (section 3.2.2.2);
* numbers as ECMAScript's ``Number.prototype.toString`` prints IEEE 754 doubles
  (section 3.2.2.3); NaN and infinities have no form;
* integers, and doubles that would print as integers, must lie within +-(2**53 - 1)
  (I-JSON, RFC 7493 section 2.2). The ``rfc8785`` package refuses the same integers; we
  also refuse doubles from 2**53 up to 1e21, which it accepts, because their text reads
  back as an integer beyond 2**53 in any language with exact integers. Nothing accepted
  is printed differently from RFC 8785.
* object members sorted by the UTF-16 code units of their names (section 3.2.3).

Why not the ``rfc8785`` package: it is correct (the tests use it as a differential
oracle) but writes token by token into a ``BytesIO`` and costs 58 us for a 600-byte
envelope here, as much as the Ed25519 verification itself. This module reuses CPython's
C string escaper and costs about 8 us (``make bench`` prints both).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from json.encoder import encode_basestring as _quote  # C-accelerated; JCS-compatible escaping

import msgspec

from infrafabric.errors import CanonicalizationError

__all__ = [
    "MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "canonical_json",
    "canonical_json_of_data",
    "format_number",
]

#: Largest integer magnitude a double holds exactly (I-JSON, RFC 7493 section 2.2).
MAX_SAFE_INTEGER = 2**53 - 1
#: Deepest nesting accepted; deeper input is refused instead of exhausting the stack.
MAX_DEPTH = 64
# ECMAScript switches to exponent notation at 1e21 (ECMA-262 Number::toString, step 7).
_EXPONENT_FORM_FROM = 1e21

# Code point order equals UTF-16 code unit order unless a name holds a character at or
# above U+E000: supplementary characters sort after U+E000..U+FFFF by code point but
# before them by UTF-16 (their lead surrogates are D800..DBFF).
_UTF16_ORDER_DIFFERS_FROM = "\ue000"


def canonical_json(value: object) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of ``value``.

    Raises :class:`~infrafabric.errors.CanonicalizationError` when ``value`` has no
    canonical form: a non-finite float, an integer of magnitude 2**53 or more, a
    non-string object key, a lone surrogate, nesting deeper than :data:`MAX_DEPTH`, or
    a type JSON does not have.
    """
    parts: list[str] = []
    _emit(value, parts, 0)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalizationError("string holds a lone surrogate, not UTF-8") from exc


# msgspec writes sorted, compact JSON with JCS's string escaping, ten to twenty times
# faster than any Python walk. Outside strings its output can differ from RFC 8785 only
# in numbers: integral doubles ("1.0", "-0.0"; the ".0" is dropped in place), exponents
# ("1e16", "7.2e-6"), positional numbers below 1e-6 ("0.0000001"), integer parts of 16
# digits (near or beyond 2**53). Inside strings and names, only characters at or above
# U+E000 (UTF-8 lead bytes EE to F4) can sort differently: their code point order is not
# their UTF-16 order. Each of these cases takes the exact path.
_SORTED_ENCODER = msgspec.json.Encoder(order="sorted")
_HIGH_LEAD_BYTES = tuple(bytes([lead]) for lead in range(0xEE, 0xF5))
_POINT_ZERO = re.compile(rb"\.0(?=[,\]}]|\Z)")  # outside strings: the end of an integral double
# Everything that can stand next to a number, as a comma, so one pattern finds each case.
_SEPARATORS_AS_COMMAS = bytes.maketrans(b":[]{}-", b",,,,,,")
_DIGITS_AS_NINES = bytes.maketrans(b"0123456789", b"9999999999")
_LONG_INTEGER = b"," + b"9" * 16  # an integer part of 16 digits: 1e15 or more
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[{]}")))


def canonical_json_of_data(value: object) -> bytes:
    """:func:`canonical_json` for values known to be JSON data, several times faster.

    "JSON data" means what a JSON parser returns, or what :func:`canonical_json` has
    accepted once: string keys, no NaN or infinity (msgspec would write those as
    ``null``). Wherever msgspec's output could differ from RFC 8785, and whenever
    nesting is deeper than :data:`MAX_DEPTH`, the value takes the exact path instead, so
    the bytes are always those of :func:`canonical_json` (property tests check it).
    """
    try:
        text = _SORTED_ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):
        return canonical_json(value)  # raises the precise CanonicalizationError
    if not text.isascii() and any(lead in text for lead in _HIGH_LEAD_BYTES):
        return canonical_json(value)
    between = _between_strings(text)
    if _exponent_or_tiny(between):
        return canonical_json(value)
    if _POINT_ZERO.search(between):
        # Integral doubles: msgspec writes 2.0, RFC 8785 writes 2. Drop the ".0" in place,
        # unless -0.0 is among them (RFC 8785 writes 0) or a string holds ".0" too.
        if b"-0.0" in between or text.count(b".0") != between.count(b".0"):
            return canonical_json(value)
        text, between = _POINT_ZERO.sub(b"", text), _POINT_ZERO.sub(b"", between)
    if _long_integer(between) or _too_deep(between):
        return canonical_json(value)
    return text


def _between_strings(text: bytes) -> bytes:
    """What lies outside the strings of compact JSON ``text``: punctuation, numbers, literals."""
    if b'\\"' in text:
        # Drop escaped backslashes, then escaped quotes: every quote left delimits a string.
        # (Without a backslash before any quote, every quote delimits one already.)
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(text.split(b'"')[::2])


def _exponent_or_tiny(between: bytes) -> bool:
    if between.count(b"e") != between.count(b"true") + between.count(b"false"):
        return True  # an "e" outside strings and literals: an exponent
    return b"0.000000" in between  # a positional number below 1e-6


def _long_integer(between: bytes) -> bool:
    """An integer part of 16 digits or more: near or beyond 2**53."""
    nines = between.translate(_SEPARATORS_AS_COMMAS).translate(_DIGITS_AS_NINES)
    return _LONG_INTEGER in nines or nines.startswith(_LONG_INTEGER[1:])


def _too_deep(between: bytes) -> bool:
    """True if the arrays and objects whose brackets are in ``between`` nest deeper than
    MAX_DEPTH."""
    if between.count(b"[") + between.count(b"{") <= MAX_DEPTH:
        return False  # too few containers to nest that deep
    skeleton = between.translate(_BRACKETS, _NOT_BRACKETS)
    for _ in range(MAX_DEPTH):
        if not skeleton:
            return False
        skeleton = skeleton.replace(b"()", b"")  # peel one level: every innermost pair
    return bool(skeleton)


def format_number(number: float) -> str:
    """Format a number as ECMAScript ``Number.prototype.toString`` does (RFC 8785 3.2.2.3).

    Every finite double has a form here, including those :func:`canonical_json` refuses
    inside documents (from 2**53 up to 1e21). Raises :class:`~infrafabric.errors.CanonicalizationError` for NaN, infinities, booleans
    and integers a double cannot hold exactly.
    """
    if isinstance(number, bool):
        raise CanonicalizationError("a boolean is not a number")
    if isinstance(number, int):
        return _format_int(int(number))
    return _format_float(float(number))


def _emit(value: object, parts: list[str], depth: int) -> None:
    kind = type(value)
    if kind is str:
        parts.append(_quote(value))  # type: ignore[arg-type]
    elif kind is dict:
        _emit_object(value, parts, depth)  # type: ignore[arg-type]
    elif kind is list or kind is tuple:
        _emit_array(value, parts, depth)  # type: ignore[arg-type]
    elif kind is int:
        parts.append(_format_int(value))  # type: ignore[arg-type]
    elif kind is float:
        parts.append(_format_document_float(value))  # type: ignore[arg-type]
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif value is None:
        parts.append("null")
    else:
        _emit(_plain(value), parts, depth)


def _emit_object(obj: dict[object, object], parts: list[str], depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise CanonicalizationError(f"nesting deeper than {MAX_DEPTH}")
    for key in obj:
        if type(key) is not str:
            raise CanonicalizationError(f"object key {key!r} is not a string")
    names: list[str] = sorted(obj)  # type: ignore[arg-type]
    joined = "".join(names)
    if not joined.isascii() and max(joined) >= _UTF16_ORDER_DIFFERS_FROM:
        names.sort(key=_utf16_units)
    parts.append("{")
    separator = ""
    for name in names:
        parts.append(separator)
        parts.append(_quote(name))
        parts.append(":")
        _emit(obj[name], parts, depth + 1)
        separator = ","
    parts.append("}")


def _emit_array(items: list[object] | tuple[object, ...], parts: list[str], depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise CanonicalizationError(f"nesting deeper than {MAX_DEPTH}")
    parts.append("[")
    separator = ""
    for item in items:
        parts.append(separator)
        _emit(item, parts, depth + 1)
        separator = ","
    parts.append("]")


def _utf16_units(name: str) -> bytes:
    return name.encode("utf-16-be", "surrogatepass")


def _format_int(number: int) -> str:
    if -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
        return str(number)
    raise CanonicalizationError(f"integer {number} is not exactly representable as a double")


def _format_document_float(number: float) -> str:
    if MAX_SAFE_INTEGER < abs(number) < _EXPONENT_FORM_FROM:
        # ECMAScript prints these as plain integers, which a parser with exact integers
        # (Python, Go, Rust) reads back as an integer a double cannot hold: refuse them, so
        # that every canonical text re-parses to a value with the same canonical text.
        raise CanonicalizationError(f"{number!r} would print as an integer beyond 2**53")
    return _format_float(number)


def _format_float(number: float) -> str:
    if not math.isfinite(number):
        raise CanonicalizationError(f"{number} has no JSON form")
    if number == 0.0:
        return "0"  # ECMAScript prints -0 as "0"
    text = repr(number)  # shortest round-tripping digits, as ECMAScript requires
    if "e" not in text:
        # Python uses positional notation for 1e-4 <= |x| < 1e16, a range ECMAScript also
        # prints positionally, with the same digits; only a trailing ".0" differs.
        return text[:-2] if text.endswith(".0") else text
    sign = "-" if number < 0 else ""
    mantissa, exponent = text.lstrip("-").split("e")
    return sign + _ecmascript_layout(mantissa.replace(".", ""), int(exponent) + 1)


def _ecmascript_layout(digits: str, point: int) -> str:
    """Lay out ``0.digits * 10**point`` as ECMA-262 Number::toString, steps 6 to 10.

    ``digits`` has no trailing zeros; ``point`` is ECMA's ``n`` (digits before the point).
    """
    count = len(digits)
    if count <= point <= 21:
        return digits + "0" * (point - count)
    if 0 < point <= 21:
        return digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return "0." + "0" * -point + digits
    exponent = point - 1
    exponent_text = ("e+" if exponent >= 0 else "e-") + str(abs(exponent))
    if count == 1:
        return digits + exponent_text
    return digits[0] + "." + digits[1:] + exponent_text


def _plain(value: object) -> object:
    """Map subclasses and other containers onto the plain JSON types, or refuse."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list | tuple):
        return list(value)
    raise CanonicalizationError(f"{type(value).__name__} is not a JSON type")
