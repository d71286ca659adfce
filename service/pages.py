"""Pages of a search: a stable order, a score floor and an opaque cursor.

The order is by score, then video id (so equal scores never swap between pages). A page token
names the query, the page size, the score floor and where the next page starts; a request that
brings one must repeat the same query, top_k, min_score and filter. Each page is computed afresh, the
engine asked for every result up to the end of that page plus one (which says whether another
page follows), so its depth is bounded by GLCCL_MAX_PAGE_DEPTH. With the two stages, results go
as deep as GLCCL_CANDIDATES; the exhaustive path has no such limit.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from service.moments import Hit


class BadPageToken(ValueError):
    pass


@dataclass(frozen=True)
class PageRequest:
    query: str
    size: int
    min_score: float | None
    offset: int = 0
    where: str | None = None  # the filter's canonical text (Filter.key)

    def _fingerprint(self) -> str:
        key = json.dumps([self.query, self.size, self.min_score, self.where])
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def token_for(self, offset: int) -> str:
        raw = json.dumps({"f": self._fingerprint(), "o": offset}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def resume(self, token: str) -> PageRequest:
        """This request from where `token` points; BadPageToken when it is not one of ours or was
        issued for another query, top_k, min_score or filter."""
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            fingerprint, offset = data["f"], int(data["o"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BadPageToken("page_token is not a token this service issued") from exc
        if fingerprint != self._fingerprint():
            raise BadPageToken("page_token was issued for another query, top_k, min_score or filter: repeat those")
        if offset < 0:
            raise BadPageToken("page_token is not a token this service issued")
        return PageRequest(self.query, self.size, self.min_score, offset, self.where)

    @property
    def depth(self) -> int:
        """Results the engine must return: to the end of this page, and one more."""
        return self.offset + self.size + 1

    def page(self, hits: Sequence[Hit]) -> tuple[list[Hit], str | None]:
        """This page of `hits` (in the stable order, floor applied) and the next page's token."""
        ranked = sorted(hits, key=lambda h: (-h.score, h.video_id))
        if self.min_score is not None:
            ranked = [h for h in ranked if h.score >= self.min_score]
        end = self.offset + self.size
        return ranked[self.offset : end], self.token_for(end) if len(ranked) > end else None
