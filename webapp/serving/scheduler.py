"""Queue requests from many clients and drive the engine: every writing request steps in one batch.

The scheduler is the only bridge between the socket handlers and the engine.
Handlers only append commands to an inbox; one loop (a green thread under
eventlet) applies them between model calls and runs every model call in a real
OS thread through the Runner. Each turn reads new requests' prompts (for up to
PREFILL_SLICE; several of like length in one pass), then gives every other writing
request of every client one more token in a single forward pass; priming and
scoring run only when no request waits. So no lock guards the model, cancelling
is just dropping a task, and each client's events leave in order.
"""
import dataclasses
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from ..generation.engine import PASS_WORK
from ..generation.settings import BEAM
from ..web import protocol
from ..web.protocol import ProtocolError
from .idle import IdleWork, replace_at_back

log = logging.getLogger(__name__)

IDLE_WAIT = 1.0  # seconds the loop sleeps when there is nothing to do
# Reading new prompts stops for a batched step once this much time is spent: a typed-on
# document costs little (the tab's prompt cache), a fresh long one may take all. It trades
# new requests' first text against writers' next token (measured: docs/performance.md, "Thresholds").
PREFILL_SLICE = 0.2
# New requests are read together in one forward pass, their unread tokens left-padded to
# the longest. A pass costs about what a decoding step does however few tokens it reads,
# and long prompts read together cost less each, but every writing request waits for the
# whole pass. So one pass reads at most this much work, weights × padded tokens (rows × the
# longest): 2048 tokens of the embedded model's 135M weights, 360 of GPT-2 large's 774M
# (whose prompts gain little from company). Measured: docs/performance.md, "Thresholds".
READ_TOGETHER_WORK = PASS_WORK
# The most padding a request may add to a pass: a short prompt beside a long one would be
# read at the long one's cost, more than a pass of its own (a fixed cost plus a share per
# token; measured: docs/performance.md, "Thresholds").
PADDING_ALLOWANCE = 128
BUSY_RETRY_SECONDS = 3.0  # the retry hint sent with `busy`: about one request's time


@dataclass
class Task:
    """One client request the loop is working on."""

    sid: str
    id: str
    request: object  # SuggestRequest or ExtendRequest
    owner: str = ""  # the student; one request in flight per student, whichever tab sent it
    generation: object = None  # engine.Generation once started
    received: float = field(default_factory=time.monotonic)
    first_delta: float | None = None
    steps: int = 0
    started: float | None = None
    model_seconds: float = 0.0  # time spent inside model calls (the rest is queueing and I/O)
    prepared: object = None  # its engine's prepared request (tokenized, truncated, healed), made once while it waits
    unread: int | None = None  # tokens its start will read, counted once while it waits
    position: int = 0  # its place in line among new requests, as last told to its tab (0: not told)


class Scheduler(IdleWork):
    """Owns the queue of tasks and the finished option sets kept for extend."""

    def __init__(self, runner, emit, max_queue=64, kv_budget_bytes=1 << 30, keep_sets=8, prefix_budget_bytes=512 << 20):
        """`emit(event, payload, to=sid)` sends to one client; nothing runs until `attach`."""
        self.runner = runner
        self.emit = emit
        self.max_queue = max_queue
        self.kv_budget_bytes = kv_budget_bytes
        self.keep_sets = keep_sets
        self.engine = None
        self.inbox = deque()  # commands from handlers, applied by the loop between steps
        self.waiting = 0  # `submit` commands in the inbox: only they count as work waiting (see depth)
        self.waiting_lock = threading.Lock()  # handlers add (threads, in threading mode), the loop takes
        self.tasks = deque()  # running tasks: the writing ones step together, new ones are read one per turn
        self.finished = OrderedDict()  # (sid, id) -> Generation, oldest first
        self.prefixes = OrderedDict()  # sid -> engine.Prefix of the tab's last prompt, least recently used first
        self.primes = OrderedDict()  # sid -> PrimeRequest still to read, in turn, when no request waits
        self.scores = OrderedDict()  # sid -> ScoreRequest to answer when nothing else waits
        self.scored = OrderedDict()  # sid -> engine.Scored: the last scored text, so a score reads only what is new
        self.distributions = OrderedDict()  # sid -> DistributionRequest whose text the model has still to read
        self.next_logits = {}  # sid -> (text, logits after it): a settings change reshapes them without the model
        self.prefix_budget_bytes = prefix_budget_bytes
        self.wakeup = runner.event()
        self.running = False
        self.on_finish = lambda sid, stats: None  # the classroom counts tokens and waits here

    # ---- called by socket handlers (any thread or green thread) ----------------------

    def submit(self, sid, request, owner=None):
        """Queue a suggest or extend request of student `owner`; refuse with `busy` when the queue is full."""
        if self.depth() >= self.max_queue:
            raise ProtocolError(f"the server is busy ({self.max_queue} requests queued); try again in a few seconds",
                                code=protocol.BUSY, retry_after=BUSY_RETRY_SECONDS)
        with self.waiting_lock:
            self.waiting += 1
        self._post("submit", sid, (request, owner or sid))

    def depth(self):
        """Suggest and extend requests waiting or running (cancels, priming, scores, charts and leaving are not)."""
        return self.waiting + len(self.tasks)

    def prime(self, sid, request):
        """Read a tab's text ahead of its TAB when the model is otherwise idle (the newest text wins)."""
        self._post("prime", sid, request)

    def score(self, sid, request):
        """Score a tab's text when the model is otherwise idle (the newest text wins)."""
        self._post("score", sid, request)

    def distribution(self, sid, request):
        """Answer with the next-token distribution after a tab's text (at once when only the settings changed)."""
        self._post("distribution", sid, request)

    def cancel(self, sid, request_id):
        """Stop request `request_id` of client `sid` if it is still running."""
        self._post("cancel", sid, request_id)

    def disconnect(self, sid, reason=None):
        """Forget everything of a client that left, stopping its running request (`reason`: why it left, logged)."""
        self._post("disconnect", sid, reason)

    def _post(self, *command):
        self.inbox.append(command)
        self.wakeup.set()

    # ---- the loop ------------------------------------------------------------------

    def attach(self, engine):
        """Start serving with `engine` (once the model has loaded)."""
        self.engine = engine
        self.running = True
        self.runner.spawn(self.run)

    def stop(self):
        """Let the loop end after its current step."""
        self.running = False
        self.wakeup.set()

    def run(self):
        """Turn after turn until stopped; a turn that fails fails its requests, never the loop (nor the model)."""
        while self.running:
            try:
                self._turn()
            except Exception:  # a fault no narrower guard caught: the requests in flight are told, the loop goes on
                log.exception("a scheduler turn failed")
                self._fail_tasks(list(self.tasks), "the server failed while writing; please try again")

    def _turn(self):
        """Apply commands; read new requests' prompts (a time slice); one batched step for the others; a beam step."""
        self._apply_inbox()
        if not self.tasks:
            if self.distributions:  # someone is looking at the chart: before priming and scoring
                self._distribution_one()
            elif self.primes:  # the lowest priority: a request that arrives waits for one chunk at most
                self._prime_one()
            elif self.scores:
                self._score_one()
            else:
                self.wakeup.wait(IDLE_WAIT)
                self.wakeup.clear()
            return
        self._tell_positions()
        started = self._start_new_requests()
        if started:
            self._apply_inbox()  # a cancel sent while a long prompt was read applies before the step
        writing = [task for task in self.tasks if task.generation is not None and task not in started]
        # beam search writes a whole step in one call that cannot be paused: one such call a turn, on its own, so
        # that the others' step never waits for more than one of them (each bounded by the engine's beam_seconds)
        beams = [task for task in writing if task.generation.settings.mode == BEAM]
        sampled = [task for task in writing if task.generation.settings.mode != BEAM]
        if sampled:
            self._run_model(self._step_call, sampled)
        if beams:  # the one that has written the fewest steps: beam searches take turns
            self._run_model(self._step_call, [min(beams, key=lambda task: task.steps)])

    def _tell_positions(self):
        """Tell each new request still waiting its place in line, when it changed (the page shows it)."""
        waiting = [task for task in self.tasks if task.generation is None]
        for position, task in enumerate(waiting[1:], start=2):  # the first is read this turn
            if task.position != position:
                task.position = position
                self.emit(protocol.QUEUED, protocol.queued_payload(task.id, position), to=task.sid)

    def _start_new_requests(self):
        """Read new requests' prompts, oldest first, until PREFILL_SLICE is spent (at least one pass)."""
        began = time.monotonic()
        started = []
        while time.monotonic() - began < PREFILL_SLICE:
            fresh = [task for task in list(self.tasks) if task.generation is None and self._counted(task)]
            if not fresh:
                break
            together = self._read_together(fresh)
            self._run_model(self._start_call, together)
            started += together
        return started

    def _read_together(self, fresh):
        """The oldest new request, and after it the next ones that fit one pass with it (see READ_TOGETHER_WORK)."""
        budget = READ_TOGETHER_WORK / max(1, self.engine.loaded.parameters)  # padded tokens
        together, longest = [fresh[0]], self._unread(fresh[0])
        for task in fresh[1:]:
            tokens = self._unread(task)
            wider = max(longest, tokens)
            # a shorter prompt is padded to the longest; a longer one pads every prompt already in
            padding = wider - tokens if tokens <= longest else len(together) * (tokens - longest)
            if (len(together) + 1) * wider <= budget and padding <= PADDING_ALLOWANCE:
                together.append(task)
                longest = wider
        return together

    def _counted(self, task):
        """Whether a new request could be prepared and its unread tokens counted; one that cannot fails alone."""
        try:
            self._unread(task)
            return True
        except Exception:
            log.exception("preparing request %s failed", task.id)
            self._fail_tasks([task], "this text could not be prepared for the model; please try again")
            return False

    def _unread(self, task):
        """Tokens a new request's start would read; beam search counts as too many (it reads on its own).

        Counted once per request (it tokenizes the text, on the loop): while it waits, its
        tab's prompt cache can only be dropped (priming and the chart read only when no
        request waits), and the count only decides which requests are read together.
        """
        if task.unread is None:
            beam_search = task.request.settings.mode == BEAM
            task.unread = math.inf if beam_search else \
                self.engine.unread(self._prepared(task), self.prefixes.get(task.sid))
        return task.unread

    def _prepared(self, task):
        """A new request as its engine prepares it (no model work), made once."""
        if task.prepared is None:
            task.prepared = self.engine.prepare(task.request.text, task.request.settings)
        return task.prepared

    def _run_model(self, call, tasks):
        """Run `call(tasks)` off the hub, send what each task got, and finish the tasks that are done."""
        began = time.monotonic()
        for task in tasks:
            task.started = task.started or began
        try:
            all_deltas = self.runner.run_blocking(call, tasks)
        except Exception:  # the model failed for the whole call
            log.exception("generation failed for requests %s", [task.id for task in tasks])
            if call == self._start_call and len(tasks) > 1:  # read alone, each fails or starts on its own
                for task in tasks:
                    task.prepared = None
                    self._run_model(call, [task])
                return
            self._fail_tasks(tasks, "the model failed while writing; please try again")
            return
        elapsed = time.monotonic() - began
        for task, deltas in zip(tasks, all_deltas):
            task.model_seconds += elapsed
            task.steps += 1
            if task.generation.failure is not None:  # this request alone failed (its settings or state)
                log.error("request %s failed: %r", task.id, task.generation.failure)
                self._fail_tasks([task], "writing this request failed; please try again or change its settings")
                continue
            self._send_deltas(task, deltas)
            if task.generation.finished:
                self.tasks.remove(task)
                try:
                    self._send_deltas(task, self.engine.flush(task.generation))
                    self._finish(task)
                except Exception:  # finishing this one failed: it alone is told
                    log.exception("finishing request %s failed", task.id)
                    self._fail_tasks([task], "the server failed while finishing this request; please try again")

    def _fail_tasks(self, tasks, message):
        """Tell each task's tab that it failed (`internal`) and drop the tasks; the others go on."""
        error = ProtocolError(message, code=protocol.INTERNAL)
        for task in tasks:
            self.emit(protocol.ERROR, protocol.error_payload(task.id, error), to=task.sid)
            if task in self.tasks:
                self.tasks.remove(task)

    def _start_call(self, tasks):
        """Runs in an OS thread: read the prompts (from the tabs' caches where they can) and sample first tokens."""
        # only this thread touches `prefixes` while a model call runs: the loop waits for it
        requests = [(self._prepared(task), self.prefixes.pop(task.sid, None)) for task in tasks]
        all_deltas = []
        for task, (generation, deltas) in zip(tasks, self.engine.start_many(requests)):
            task.generation = generation
            if generation.prefix is not None:
                self._keep_prefix(task.sid, generation.prefix)
            generation.prefix = None
            all_deltas.append(deltas)
        return all_deltas

    def _step_call(self, tasks):
        """Runs in an OS thread: one more token for every live option of every task, in one pass."""
        # the other requests (being read, or just started) join the batch soon (the loop waits for this call: its
        # tasks hold still)
        return self.engine.step_many([task.generation for task in tasks], len(self.tasks) - len(tasks))

    def _send_deltas(self, task, deltas):
        if any(deltas):
            if task.first_delta is None:
                task.first_delta = time.monotonic()
            self.emit(protocol.DELTA, protocol.delta_payload(task.id, deltas), to=task.sid)

    def _finish(self, task):
        """Send `done` and keep the set so that a repeat TAB can continue it."""
        generation = task.generation
        now = time.monotonic()
        stats = {
            "prompt_tokens": len(generation.prompt_ids),
            "reused_tokens": generation.reused,
            "truncated_tokens": generation.truncated,
            "healed": generation.healed,
            "steps": task.steps,
            "queued_ms": _ms(task.received, task.started or now),
            "first_delta_ms": _ms(task.received, task.first_delta) if task.first_delta else None,
            "model_ms": round(task.model_seconds * 1000, 1),
            "total_ms": _ms(task.received, now),
            "new_tokens": sum(option.step_tokens for option in generation.options),
            "settings": dataclasses.asdict(generation.settings),  # what wrote them, after the class's locks
        }
        payload = protocol.done_payload(task.id, generation.texts(), generation.finishes(), stats,
                                        generation.likelihoods())
        self.emit(protocol.DONE, payload, to=task.sid)
        try:  # answered already: what follows only counts it and keeps it for extend
            self.on_finish(task.sid, stats)
            self._keep(task.sid, task.id, generation)
        except Exception:
            log.exception("keeping request %s failed (extending it will ask for new options)", task.id)

    # ---- commands --------------------------------------------------------------------

    def _apply_inbox(self):
        while self.inbox:
            kind, sid, argument = self.inbox.popleft()
            if kind == "submit":
                with self.waiting_lock:
                    self.waiting -= 1
            try:
                self._apply(kind, sid, argument)
            except Exception:  # this command fails alone
                log.exception("applying %s for %s failed", kind, sid)
                request_id = argument[0].id if kind == "submit" else argument if kind == "cancel" else \
                    getattr(argument, "id", None)
                error = ProtocolError("the server failed to handle this request; please try again",
                                      code=protocol.INTERNAL)
                self.emit(protocol.ERROR, protocol.error_payload(request_id, error), to=sid)

    def _apply(self, kind, sid, argument):
        """Carry out one command from the inbox."""
        if kind == "submit":
            self._start(sid, *argument)
        elif kind == "cancel":
            self._cancel_running(lambda task, sid=sid, request_id=argument: task.sid == sid
                                 and task.id == request_id)
        elif kind == "score":
            replace_at_back(self.scores, sid, argument)
        elif kind == "prime":
            replace_at_back(self.primes, sid, argument)
        elif kind == "distribution":
            self._distribution(sid, argument)
        elif kind == "disconnect":
            self._forget(sid, argument)

    def _start(self, sid, request, owner):
        """A new request replaces the student's running one (one request in flight per student)."""
        self.primes.pop(sid, None)  # the TAB reads whatever priming has not
        self._cancel_running(lambda task: task.owner == owner)  # a running parent stops and becomes the base
        if isinstance(request, protocol.ExtendRequest):
            self._start_extend(sid, request, owner)
            return
        self.tasks.append(Task(sid, request.id, request, owner))

    def _start_extend(self, sid, request, owner):
        generation = self.finished.pop((sid, request.parent), None)
        if generation is None:
            message = f"no option set {request.parent!r} to extend; press Shift+Tab for new options"
            error = ProtocolError(message, "parent", code=protocol.UNKNOWN_PARENT)
            self.emit(protocol.ERROR, protocol.error_payload(request.id, error), to=sid)
            return
        self.engine.extend(generation, request.settings)
        self.tasks.append(Task(sid, request.id, request, owner, generation=generation))

    def _cancel_running(self, chosen):
        """Stop the running tasks `chosen(task)` picks, answering each with `done` (finish 'cancelled')."""
        for task in [t for t in self.tasks if chosen(t)]:
            self.tasks.remove(task)
            if task.generation is None:  # never started: nothing to keep
                self.emit(protocol.DONE, protocol.done_payload(task.id, [], [], {}), to=task.sid)
                continue
            try:
                self.engine.cancel(task.generation)
                self._finish(task)
            except Exception:  # this one is told, and the request that replaces it goes on
                log.exception("cancelling request %s failed", task.id)
                self._fail_tasks([task], "the server failed while stopping this request")

    def _forget(self, sid, reason=None):
        dropped = [t for t in self.tasks if t.sid == sid]
        if dropped:  # nobody is left to tell: the page says so itself when its connection drops
            log.warning("connection %s closed (%s) with requests %s in flight; they are dropped", sid, reason,
                        [task.id for task in dropped])
        for task in dropped:
            self.tasks.remove(task)
        for key in [k for k in self.finished if k[0] == sid]:
            del self.finished[key]
        self.prefixes.pop(sid, None)
        self.primes.pop(sid, None)
        self.scores.pop(sid, None)
        self.scored.pop(sid, None)
        self.distributions.pop(sid, None)
        self.next_logits.pop(sid, None)

    def _keep(self, sid, request_id, generation):
        """Remember a finished set; drop old sets and release caches over the memory budget."""
        self.finished[(sid, request_id)] = generation
        own = [k for k in self.finished if k[0] == sid]
        for key in own[: max(0, len(own) - self.keep_sets)]:
            del self.finished[key]
        total = sum(g.cache_bytes() for g in self.finished.values())
        for old in self.finished.values():  # oldest first
            if total <= self.kv_budget_bytes:
                break
            total -= old.cache_bytes()
            self.engine.release(old)  # extend still works: it re-reads prompt and options

    # ---- figures for the status bar and /healthz -----------------------------------

    def load(self):
        """How busy the scheduler is right now."""
        return {"running": len(self.tasks), "waiting": self.waiting}


def _ms(start, end):
    return round((end - start) * 1000, 1)
