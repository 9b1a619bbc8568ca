"""Channel adapters: one module per way of reaching someone. See :mod:`channels.base`."""

from channels.base import (
    Channel,
    ChannelError,
    Outgoing,
    Permanent,
    Prepared,
    RateLimit,
    Receipt,
    Transient,
    Unknown,
)

__all__ = [
    "Channel",
    "ChannelError",
    "Outgoing",
    "Permanent",
    "Prepared",
    "RateLimit",
    "Receipt",
    "Transient",
    "Unknown",
]
