"""What the ``backend`` fixture gives a backend test: a Repository and a Queue of one
implementation (the memory pair, or one SQLBackend as both) and the clock they share."""

from __future__ import annotations

import attrs

from imageproc import Queue, Repository
from imageproc.testing import FastForwardClock


@attrs.frozen
class Backend:
    repository: Repository
    queue: Queue
    #: The backend's clock: advance it instead of sleeping until a lease or a delay runs out.
    clock: FastForwardClock
