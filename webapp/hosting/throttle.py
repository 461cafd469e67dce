"""Sliding-window rate limits: at most `limit` events per key in any `window` seconds."""
import time
from collections import deque


class SlidingWindow:
    """Counts recent events per key (a student, an address) and says when one is too many."""

    def __init__(self, limit, window=60.0, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self.clock = clock
        self.events = {}  # key -> deque of event times, oldest first

    def retry_after(self, key):
        """Seconds until `key` may act again; 0 when it may act now."""
        times = self._prune(key)
        if len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window - self.clock())

    def hit(self, key):
        """Record one event for `key`."""
        self._prune(key)
        self.events.setdefault(key, deque()).append(self.clock())

    def allow(self, key):
        """Record an event and return True, or return False (recording nothing) when over the limit."""
        if self.retry_after(key) > 0:
            return False
        self.hit(key)
        return True

    def _prune(self, key):
        times = self.events.get(key)
        if times is None:
            return ()
        cutoff = self.clock() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:  # forget idle keys so the table does not grow with every visitor
            del self.events[key]
        return times
