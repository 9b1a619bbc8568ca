"""Process-wide settings for the commands that send: ``outreach run`` and ``outreach worker``.

Garbage collection was about a tenth of the CPU instructions of dispatching an SMS (callgrind,
``bench/RESULTS.md``): every few hundred allocations the collector walks the young objects,
and every so often everything alive - modules, the parsed config, SQLAlchemy's metadata and
compiled statements, tens of thousands of objects that live as long as the process. The
dispatcher allocates many short-lived containers per notice (rows, event data, transcripts)
and almost never makes reference cycles, so :func:`tune_gc`:

- freezes what is alive once start-up is done (:func:`gc.freeze`): those objects are never
  walked again (they would never have been freed anyway);
- lets the youngest generation grow to 50,000 objects before a collection instead of 700:
  collections become rarer, each still short, and the memory they hold back is a few MB.

Library users who embed the dispatcher keep their own settings: only the two commands call it.
"""

from __future__ import annotations

import gc

#: Allocations (minus deallocations) of container objects between youngest-generation passes.
YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Freeze everything alive now and collect the youngest generation less often."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
