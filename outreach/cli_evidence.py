"""CLI commands: evidence. Attached to the `outreach` group defined in :mod:`outreach.cli`."""

from __future__ import annotations
