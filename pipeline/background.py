"""One background thread that runs submitted jobs in order, so writing overlaps compute."""

import queue
import threading
from typing import Callable


class BackgroundRunner:
    """Runs callables in submission order on one thread; the first error is re-raised on the caller.

    The bounded queue applies back-pressure: if the disk is slower than the model, the
    model waits instead of memory growing without bound.
    """

    def __init__(self, depth: int = 8):
        self.depth = depth
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="clipsae-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            if self._error is None:
                try:
                    job()
                except BaseException as exc:
                    self._error = exc

    def check(self) -> None:
        """Raise the first error a job raised, if any."""
        if self._error is not None:
            raise self._error

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; raises the first error any earlier job raised."""
        self.check()
        self._q.put(job)

    def close(self) -> None:
        """Wait for every queued job; raise the first error."""
        self._q.put(None)
        self._thread.join()
        self.check()
