"""Video metadata (a JSON object kept with the frames) and the filters searches apply to it.

Metadata: any JSON object up to `MAX_METADATA_BYTES` (GLCCL_MAX_METADATA_BYTES) of compact JSON,
for example {"title": "...", "tags": ["cats"], "url": "...", "year": 2021}. PUT replaces it whole,
PATCH merges (RFC 7386 JSON merge patch: a null deletes a key).

A filter is a tree of conditions on fields (a dotted path reaches into nested objects):

    {"field": "tags", "eq": "cats"}                 equality; on a list field, any element
    {"field": "lang", "in": ["en", "fr"]}           membership (on a list field: any element)
    {"field": "year", "gte": 2020, "lt": 2024}      numeric range (gt, gte, lt, lte)
    {"field": "published", "gte": "2024-01-01"}     date range: ISO 8601 bounds and field values
    {"and": [...]}, {"or": [...]}, {"not": {...}}   combinations

A video without the field never satisfies a condition on it (so `not` of that condition holds).
Equality keeps JSON's types apart: true is not 1, and 1 equals 1.0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_METADATA_BYTES = 16384
MAX_FILTER_CONDITIONS = 64
MAX_FILTER_DEPTH = 8

Scalar = str | int | float | bool
Metadata = dict[str, Any]
Predicate = Callable[[Mapping[str, Any]], bool]


class BadMetadata(ValueError):
    """Metadata that is not a JSON object, is too large, or has an empty key."""


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True, allow_nan=False)


def check_metadata(value: Any, limit: int = MAX_METADATA_BYTES) -> Metadata:
    """`value` as stored metadata, or BadMetadata saying what to fix."""
    if not isinstance(value, dict):
        raise BadMetadata(f"metadata must be a JSON object, got {type(value).__name__}")
    if any(not isinstance(k, str) or not k for k in value):
        raise BadMetadata("metadata keys must be non-empty strings")
    try:
        size = len(compact_json(value).encode())
    except (TypeError, ValueError) as exc:
        raise BadMetadata(f"metadata must be plain JSON (no NaN or infinity): {exc}") from None
    if size > limit:
        raise BadMetadata(f"metadata is {size} bytes of JSON; the limit is {limit} (GLCCL_MAX_METADATA_BYTES)")
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class Filter(BaseModel):
    """One node of a filter: a condition on `field`, or and / or / not of other filters."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    field: str | None = Field(None, description="metadata field, dotted for nested objects (e.g. 'source.site')")
    eq: Scalar | None = Field(None, description="the field equals this (a list field: contains it)")
    in_: list[Scalar] | None = Field(None, alias="in", description="the field is one of these")
    gt: float | str | None = Field(None, description="greater than (a number, or an ISO 8601 date)")
    gte: float | str | None = Field(None, description="at least")
    lt: float | str | None = Field(None, description="less than")
    lte: float | str | None = Field(None, description="at most")
    and_: list[Filter] | None = Field(None, alias="and", description="every one of these holds")
    or_: list[Filter] | None = Field(None, alias="or", description="at least one of these holds")
    not_: Filter | None = Field(None, alias="not", description="this does not hold")

    @model_validator(mode="after")
    def _one_kind(self) -> Filter:
        ranges = [n for n in ("gt", "gte", "lt", "lte") if getattr(self, n) is not None]
        kinds = [
            n
            for n, present in (
                ("eq", self.eq is not None),
                ("in", self.in_ is not None),
                ("range", bool(ranges)),
                ("and", self.and_ is not None),
                ("or", self.or_ is not None),
                ("not", self.not_ is not None),
            )
            if present
        ]
        if len(kinds) != 1:
            raise ValueError(
                "a filter is one of: {field, eq}, {field, in}, {field, gt/gte/lt/lte}, {and}, {or}, {not}; "
                + (f"this one combines {', '.join(kinds)}" if kinds else "this one is empty")
            )
        condition = kinds[0] in ("eq", "in", "range")
        if condition and not self.field:
            raise ValueError(f"a filter with {kinds[0]!r} needs a 'field'")
        if not condition and self.field is not None:
            raise ValueError(f"'field' goes in a condition, not beside {kinds[0]!r}")
        if kinds[0] in ("and", "or") and not getattr(self, kinds[0] + "_"):
            raise ValueError(f"{kinds[0]!r} needs at least one filter")
        if kinds[0] == "in" and not self.in_:
            raise ValueError("'in' needs at least one value")
        if ranges:
            bounds = [getattr(self, n) for n in ranges]
            if all(isinstance(b, str) for b in bounds):
                for b in bounds:
                    if _as_datetime(b) is None:
                        raise ValueError(f"range bound {b!r} is neither a number nor an ISO 8601 date")
            elif any(isinstance(b, str) for b in bounds):
                raise ValueError("range bounds are all numbers or all ISO 8601 dates, not a mix")
            elif not all(math.isfinite(b) for b in bounds):
                raise ValueError("range bounds must be finite")
        return self

    def size(self, depth: int = 1) -> int:
        """Conditions in the tree; ValueError beyond the limits (a filter is evaluated per video)."""
        if depth > MAX_FILTER_DEPTH:
            raise ValueError(f"filters nest at most {MAX_FILTER_DEPTH} deep")
        children = self.and_ or self.or_ or ([self.not_] if self.not_ is not None else [])
        n = sum(c.size(depth + 1) for c in children) if children else 1
        if depth == 1 and n > MAX_FILTER_CONDITIONS:
            raise ValueError(f"a filter holds at most {MAX_FILTER_CONDITIONS} conditions, this one {n}")
        return n

    def key(self) -> str:
        """A canonical text of the filter (cache key, page-token fingerprint)."""
        return compact_json(self.model_dump(by_alias=True, exclude_none=True))


Filter.model_rebuild()


def _as_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = datetime.combine(date.fromisoformat(value), datetime.min.time())
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # naive dates read as UTC


def _lookup(meta: Mapping[str, Any], path: list[str]) -> tuple[bool, Any]:
    value: Any = meta
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _same(a: Any, b: Any) -> bool:
    """JSON equality: bools only equal bools, numbers compare by value."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def compile_filter(node: Filter) -> Predicate:
    """The filter as a function of one video's metadata."""
    if node.and_:
        parts = [compile_filter(c) for c in node.and_]
        return lambda meta: all(p(meta) for p in parts)
    if node.or_:
        parts = [compile_filter(c) for c in node.or_]
        return lambda meta: any(p(meta) for p in parts)
    if node.not_ is not None:
        inner = compile_filter(node.not_)
        return lambda meta: not inner(meta)
    path = (node.field or "").split(".")
    if node.eq is not None or node.in_ is not None:
        wanted = [node.eq] if node.eq is not None else list(node.in_ or [])

        def member(meta: Mapping[str, Any]) -> bool:
            found, value = _lookup(meta, path)
            values = value if isinstance(value, list) else [value]
            return found and any(_same(v, w) for v in values for w in wanted)

        return member
    bounds = {n: getattr(node, n) for n in ("gt", "gte", "lt", "lte") if getattr(node, n) is not None}
    dates = all(isinstance(b, str) for b in bounds.values())
    if dates:
        bounds = {n: _as_datetime(b) for n, b in bounds.items()}

    def in_range(meta: Mapping[str, Any]) -> bool:
        found, value = _lookup(meta, path)
        if not found:
            return False
        if dates:
            value = _as_datetime(value)
            if value is None:
                return False
        elif isinstance(value, bool) or not isinstance(value, int | float):
            return False
        try:
            return all(
                (n == "gt" and value > b) or (n == "gte" and value >= b) or (n == "lt" and value < b)
                or (n == "lte" and value <= b)
                for n, b in bounds.items()
            )  # fmt: skip
        except TypeError:  # an aware and a naive time cannot be compared: _as_datetime makes all aware
            return False

    return in_range
