"""The cyclic garbage collector's schedule, for a process that holds 10,000 links.

CPython collects its youngest generation after 700 net new container objects and,
every hundredth time, the whole heap, whenever that has grown by a quarter since
the last full pass. A server whose heap grows with every link it accepts pays for
that growth again and again: in a 10,000-agent connect storm the heap grew past
the quarter every few seconds, and each full pass walked all of it (94 ms at a
thousand links, 845 ms near ten thousand: about 7 s of a 40 s storm, and another
2-3 s in each 10,000-node fan-out; docs/benchmarks.md). Nearly nothing a link
holds is cyclic garbage: it is freed by reference counting when the link ends.

So, once the server has started:
- what start-up made (modules, the application, the schema, the engine) is
  frozen out of every later pass (``gc.freeze``): it lives as long as the process;
- the youngest generation is collected after ``YOUNG_THRESHOLD`` net new objects
  instead of 700, so full passes come about seventy times less often by count;
  the older generations keep CPython's ratios (a cycle that does form is still
  collected, a little later, in a few MB of memory at most).
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "settle"]

YOUNG_THRESHOLD = 50_000


def settle(young: int = YOUNG_THRESHOLD) -> None:
    """Freeze what exists now and space the collections out (call once, started)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)
