"""RFC 3339 timestamps and protobuf JSON durations read a column at a time, as nanoseconds.

A saved transcript holds two times and a duration per span; read one by one in Python they cost
more than the rest of a spans frame. Text in the shape protobuf's ToJsonString writes is parsed by
Arrow's compute kernels (pyarrow, in the `frames` extra) in a few calls per column. Every other
value (offsets, {seconds, nanos}, years outside datetime64[ns], text protobuf refuses) goes through
model.timestamp_ns / _duration_ns one at a time, and so does everything when pyarrow is missing:
the values are theirs, and so are the errors.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .model import _duration_ns, timestamp_ns

# What protobuf writes (UTC, 0-9 fraction digits), with model._RFC3339_SECOND's field ranges and
# years that datetime64[ns] holds. A day the month lacks (02-30) makes Arrow's cast fail: the
# column is then read value by value, so protobuf says what is wrong.
_TIMESTAMP = r"^(?:1[7-9]|2[01])\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,9})?Z$"
# At most 9 whole and 9 fraction digits: a decimal128(18, 9), whose ns fit an int64.
_DURATION = r"^\d{1,9}(?:\.\d{1,9})?s$"
_INT64 = (-(2**63), 2**63 - 1)


def timestamps_ns(values, texts: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(ns since the epoch, missing) for timestamp values as timestamp_ns reads them (it raises
    for what it refuses). The ns are int64, or Python ints in an object array if one does not fit.
    `texts`: the caller knows that every value is a str or None (a typed decode checked them)."""
    return _column(values, timestamp_ns, _arrow_timestamps, texts)


def durations_ns(values, texts: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(ns, missing) for duration values as model._duration_ns reads them."""
    return _column(values, _duration_ns, _arrow_durations, texts)


def _column(values, one: Callable[[Any], int | None], vectorized, texts: bool) -> tuple[np.ndarray, np.ndarray]:
    n = len(values)
    ns = np.zeros(n, dtype=np.int64)
    missing = np.zeros(n, dtype=bool)
    if not n:
        return ns, missing
    parsed = vectorized(values, texts)
    if parsed is None:
        rest = range(n)
    else:
        done, ns, missing = parsed
        rest = np.flatnonzero(~(done | missing)).tolist()
    for i in rest:
        value = one(values[i])
        if value is None:
            missing[i] = True
        elif ns.dtype != object and not _INT64[0] <= value <= _INT64[1]:
            ns = ns.astype(object)  # Python ints from here on: year 9999 in ns needs 68 bits
            ns[i] = value
        else:
            ns[i] = value
    return ns, missing


def all_text(values) -> bool:
    """Every value a str or None: what the Arrow path reads as a whole column."""
    return set(map(type, values)) <= {str, type(None)}


def _strings(values, texts: bool):
    """(values as an Arrow string array, None for each value that is no str; which values are
    None), or None without pyarrow. `texts`: every value is known to be a str or None."""
    try:
        import pyarrow as pa
    except ImportError:
        return None
    if texts or all_text(values):
        strings = pa.array(values, type=pa.string())
        return strings, strings.is_null().to_numpy(zero_copy_only=False)
    # Arrow would take bytes as text, and fail on the rest: those go value by value.
    strings = pa.array([v if type(v) is str else None for v in values], type=pa.string())
    return strings, np.fromiter((v is None for v in values), dtype=bool, count=len(values))


def _arrow_timestamps(values, texts: bool) -> tuple[np.ndarray, np.ndarray] | None:
    read = _strings(values, texts)
    if read is None:
        return None
    strings, missing = read
    import pyarrow as pa
    import pyarrow.compute as pc

    done = pc.fill_null(pc.match_substring_regex(strings, _TIMESTAMP), False)
    try:
        ns = pc.cast(pc.if_else(done, strings, None), pa.timestamp("ns", "UTC")).cast(pa.int64())
    except pa.ArrowInvalid:  # a day the month lacks: value by value, so protobuf says so
        return None
    return done.to_numpy(zero_copy_only=False), pc.fill_null(ns, 0).to_numpy(zero_copy_only=False, writable=True), missing


def _arrow_durations(values, texts: bool) -> tuple[np.ndarray, np.ndarray] | None:
    read = _strings(values, texts)
    if read is None:
        return None
    strings, missing = read
    import pyarrow as pa
    import pyarrow.compute as pc

    done = pc.fill_null(pc.match_substring_regex(strings, _DURATION), False)
    # The seconds as an exact decimal (the "s" cut off), times 10**9: two casts, where cutting
    # whole and fraction apart with a regex took twice as long.
    seconds = pc.cast(pc.utf8_slice_codeunits(pc.if_else(done, strings, None), 0, -1), pa.decimal128(18, 9))
    ns = pc.cast(pc.multiply(seconds, pa.scalar(10**9, pa.decimal128(10, 0))), pa.int64())
    return done.to_numpy(zero_copy_only=False), pc.fill_null(ns, 0).to_numpy(zero_copy_only=False, writable=True), missing
