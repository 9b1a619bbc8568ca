"""A :class:`~outreach.fetch.ValidatorCache` in the database, so conditional requests work
across runs.

The in-memory cache forgets everything when the process ends, which is exactly when it would
be useful: discovery runs once per scheduled tick, and the next tick should ask a registry
"has this page changed?" (``If-None-Match`` / ``If-Modified-Since``) and take a 304 instead
of the whole page. So validators go into ``http_validators`` and the body into ``blobs``,
where it is also the evidence the findings cite; a 304 then hands back those exact bytes.

Each ``get``/``put`` is its own short transaction: the fetcher calls them from inside the
discovery run, long before the engine's own transaction that records the findings, and a
validator must never point at a body that was not stored. The calls are synchronous (the
fetcher's protocol is), which is fine for a handful of pages against a local database.
"""

from __future__ import annotations

import hashlib
import logging

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from outreach.fetch import CachedPage
from outreach.models_contacts import HttpValidator
from outreach.proof import store_blob
from outreach.store import Blob, utcnow

log = logging.getLogger("outreach.validator_cache")

__all__ = ["DbValidatorCache"]


def _key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


class DbValidatorCache:
    """Implements :class:`outreach.fetch.ValidatorCache` over ``http_validators`` + ``blobs``.

    A database error is logged and treated as a cache miss (or a skipped write): a broken
    cache costs a full download, never a failed discovery run.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def get(self, url: str) -> CachedPage | None:
        try:
            with self._sessions() as s:
                row = s.get(HttpValidator, _key(url))
                if row is None or row.url != url:
                    return None
                blob = s.get(Blob, row.body_sha256)
                if blob is None:  # pragma: no cover - the foreign key prevents it
                    return None
                return CachedPage(
                    url=row.url,
                    etag=row.etag,
                    last_modified=row.last_modified,
                    headers=dict(row.headers or {}),
                    body=bytes(blob.data),
                    sha256=blob.sha256,
                )
        except SQLAlchemyError as exc:
            log.warning("validator cache unavailable, fetching %s in full: %s", url, exc)
            return None

    def put(self, page: CachedPage) -> None:
        for _ in range(2):  # a concurrent worker may insert the same URL first: then update
            try:
                self._write(page)
                return
            except IntegrityError:
                continue
            except SQLAlchemyError as exc:
                log.warning("validator cache not updated for %s: %s", page.url, exc)
                return

    def _write(self, page: CachedPage) -> None:
        ctype = page.headers.get("content-type", "text/html").split(";")[0].strip()
        with self._sessions.begin() as s:
            digest = store_blob(s, page.body, ctype or "text/html")
            row = s.get(HttpValidator, _key(page.url))
            if row is None:
                row = HttpValidator(url_sha256=_key(page.url), url=page.url)
                s.add(row)
            row.url = page.url
            row.etag = page.etag
            row.last_modified = page.last_modified
            # A site's cookies are no evidence of anything and have no business in our database.
            row.headers = {k: v for k, v in page.headers.items() if k.lower() != "set-cookie"}
            row.body_sha256 = digest
            row.updated_at = utcnow()
