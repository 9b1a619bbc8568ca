"""Source adapters: one module per place contacts can be discovered. See :mod:`sources.base`."""

from sources.base import (
    DeclaredContact,
    Fetched,
    Fetcher,
    FetchError,
    Finding,
    Lookup,
    Notice,
    PartyQuery,
    Source,
)

__all__ = [
    "DeclaredContact",
    "FetchError",
    "Fetched",
    "Fetcher",
    "Finding",
    "Lookup",
    "Notice",
    "PartyQuery",
    "Source",
]
