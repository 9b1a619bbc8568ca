"""The HTTP client every HTTP channel (SMS gateways, webhooks) sends through.

One place to tune connection pooling and timeouts for all gateways. Channels call
:func:`make_client` once at construction and close it in ``aclose``.
"""

from __future__ import annotations

import httpx


def make_client(*, timeout: float = 10.0, max_connections: int = 100) -> httpx.AsyncClient:
    """An AsyncClient for one channel instance."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0), limits=limits)
