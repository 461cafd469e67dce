"""Live figures for the teacher's dashboard: recent requests, waits, tokens and queue depth."""
import time
from collections import OrderedDict
from dataclasses import dataclass, field

BUCKET_SECONDS = 10  # one point of a dashboard chart
HISTORY_SECONDS = 600  # how far back the charts reach
SUMMARY_SECONDS = 60  # requests per minute and tokens per second look this far back
WAIT_SECONDS = 300  # time-to-first-delta percentiles look this far back


@dataclass
class Bucket:
    """What happened during one BUCKET_SECONDS interval."""

    requests: int = 0
    tokens: int = 0
    first_delta_ms: list = field(default_factory=list)
    busy: int = 0
    queue_max: int = 0
    connected: int = 0


class Metrics:
    """Counts events into time buckets and answers summaries and chart series."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self.buckets = OrderedDict()  # bucket start (int seconds) -> Bucket, oldest first
        self.connected = 0

    def _bucket(self):
        start = int(self.clock() // BUCKET_SECONDS * BUCKET_SECONDS)
        if start not in self.buckets:
            self.buckets[start] = Bucket(connected=self.connected)
            while next(iter(self.buckets)) < start - HISTORY_SECONDS:
                self.buckets.popitem(last=False)
        return self.buckets[start]

    def request_received(self, queue_depth):
        """A student sent a suggest or extend that was accepted."""
        bucket = self._bucket()
        bucket.requests += 1
        bucket.queue_max = max(bucket.queue_max, queue_depth)

    def request_refused_busy(self):
        """A request met a full queue."""
        self._bucket().busy += 1

    def request_done(self, first_delta_ms, new_tokens):
        """A request finished; `first_delta_ms` is None when it wrote nothing."""
        bucket = self._bucket()
        bucket.tokens += new_tokens
        if first_delta_ms is not None:
            bucket.first_delta_ms.append(first_delta_ms)

    def connections(self, count):
        """The number of open connections changed."""
        self.connected = count
        self._bucket().connected = count

    def summary(self):
        """The headline figures: rates over the last minute, waits over the last five."""
        now = self.clock()
        recent = self._since(now - SUMMARY_SECONDS)
        waits = [ms for b in self._since(now - WAIT_SECONDS) for ms in b.first_delta_ms]
        return {
            "connected": self.connected,
            "requests_per_minute": sum(b.requests for b in recent) * 60 / SUMMARY_SECONDS,
            "tokens_per_second": round(sum(b.tokens for b in recent) / SUMMARY_SECONDS, 1),
            "busy_last_minute": sum(b.busy for b in recent),
            "first_delta_ms": {"p50": percentile(waits, 50), "p95": percentile(waits, 95), "count": len(waits)},
        }

    def history(self):
        """One point per bucket over the last HISTORY_SECONDS, empty buckets included, for the charts."""
        now = int(self.clock() // BUCKET_SECONDS * BUCKET_SECONDS)
        points, connected = [], 0
        for start in range(now - HISTORY_SECONDS + BUCKET_SECONDS, now + BUCKET_SECONDS, BUCKET_SECONDS):
            bucket = self.buckets.get(start)
            if bucket is not None:
                connected = bucket.connected
            bucket = bucket or Bucket(connected=connected)
            points.append({"t": start, "requests_per_minute": bucket.requests * 60 / BUCKET_SECONDS,
                           "tokens_per_second": round(bucket.tokens / BUCKET_SECONDS, 1),
                           "first_delta_p50": percentile(bucket.first_delta_ms, 50),
                           "first_delta_p95": percentile(bucket.first_delta_ms, 95),
                           "queue": bucket.queue_max, "connected": connected})
        return points

    def _since(self, cutoff):
        return [bucket for start, bucket in self.buckets.items() if start + BUCKET_SECONDS > cutoff]


def percentile(values, p):
    """The p-th percentile (nearest rank) of `values`, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil without floats
    return round(ordered[int(rank) - 1], 1)

