"""Who is connected, what each student may ask, and the class settings: the live state of a class."""
import logging
import time
from dataclasses import dataclass, field

from ..web import protocol
from ..web.protocol import ProtocolError
from .metrics import Metrics
from .policy import ClassPolicy
from .store import GUEST_NAME, Session
from .throttle import SlidingWindow

log = logging.getLogger(__name__)

POLICY_KEY = "policy"
RECENT_SECONDS = 30 * 60  # a student whose tabs all closed stays on the dashboard this long (the end of a lesson)


class TooManyConnections(Exception):
    """A connection past the caps per student or per address; the message says which."""


@dataclass
class Student:
    """One student (one session; several tabs share it) and their activity."""

    id: str
    name: str
    sids: set = field(default_factory=set)
    joined: float = field(default_factory=time.time)
    requests: int = 0
    tokens: int = 0
    refused: int = 0  # requests refused by the rate limit
    last_request: float | None = None
    left: float | None = None  # when the last tab closed; None while connected
    ended: bool = False  # the teacher ended the session: not listed once gone

    def describe(self):
        """A row of the dashboard's student list."""
        return {"id": self.id, "name": self.name, "connections": len(self.sids), "joined": self.joined,
                "requests": self.requests, "tokens": self.tokens, "refused": self.refused,
                "last_request": self.last_request, "left": self.left}


class Classroom:
    """Sessions to students, connections to students, per-student limits and the class policy."""

    def __init__(self, store, config):
        self.store = store
        self.code = config["ACCESS_CODE"]
        self.max_options = config["MAX_OPTIONS"]
        self.max_length = config["MAX_LENGTH"]
        self.rate = SlidingWindow(config["REQUESTS_PER_MINUTE"])
        self.control = SlidingWindow(config["CONTROL_EVENTS_PER_MINUTE"])  # per student: cancel, prime, score...
        self.max_per_student = config["MAX_CONNECTIONS_PER_STUDENT"]
        self.max_per_address = config["MAX_CONNECTIONS_PER_ADDRESS"]
        self.addresses = {}  # Socket.IO sid -> the address it came from
        self.per_address = {}  # address -> open connections
        self.metrics = Metrics()
        self.students = {}  # student id -> Student, while connected
        self.recent = {}  # student id -> Student whose tabs all closed in the last RECENT_SECONDS
        self.by_sid = {}  # Socket.IO sid -> Student
        self.policy = self._load_policy()

    # ---- sessions and connections --------------------------------------------------

    def session_for(self, token):
        """The session behind a cookie, or None (then a class with a code refuses the visitor)."""
        return self.store.find_session(token, self.code)

    def guest_session(self):
        """A session for a visitor of a class without a code (the page gets it as a cookie)."""
        return self.store.create_session(GUEST_NAME, self.code, guest=True)

    def connect(self, sid, session, address="?"):
        """A connection opened; `session` None means a cookie-less client of an open class.

        Raises TooManyConnections past the caps per student and per address (nothing is counted then).
        """
        if session is None:
            session = Session(student_id=f"conn-{sid}", name="guest")
        student = self.students.get(session.student_id)
        if student is not None and len(student.sids) >= self.max_per_student:
            raise TooManyConnections(f"too many open tabs: at most {self.max_per_student} per student")
        if self.per_address.get(address, 0) >= self.max_per_address:
            raise TooManyConnections(f"too many connections from this address: at most {self.max_per_address}")
        if student is None:  # back within the lesson: the same row, counts and all
            student = self.recent.pop(session.student_id, None) or Student(session.student_id, session.name)
            student.left = None
            self.students[session.student_id] = student
        student.sids.add(sid)
        self.by_sid[sid] = student
        self.addresses[sid] = address
        self.per_address[address] = self.per_address.get(address, 0) + 1
        self.metrics.connections(len(self.by_sid))
        return student

    def disconnect(self, sid):
        """A connection closed; a student with no tab left leaves the list."""
        student = self.by_sid.pop(sid, None)
        if student is not None:
            student.sids.discard(sid)
            if not student.sids:
                self.students.pop(student.id, None)
                if not student.ended and not student.id.startswith("conn-"):  # a cookie-less one is nobody
                    student.left = time.time()
                    self.recent[student.id] = student
        address = self.addresses.pop(sid, None)
        if address is not None:
            self.per_address[address] -= 1
            if not self.per_address[address]:
                del self.per_address[address]
        self.metrics.connections(len(self.by_sid))

    def student_of(self, sid):
        """The student behind a connection."""
        return self.by_sid[sid]

    def sign_out(self, student_id):
        """End a student's sessions; return the connections to close."""
        self.store.end_sessions(student_id)
        self.recent.pop(student_id, None)
        student = self.students.get(student_id)
        if student is None:
            return []
        student.ended = True
        return sorted(student.sids)

    # ---- limits -----------------------------------------------------------------------

    def admit(self, student, settings):
        """Apply the class policy and the rate limit to a request's settings; raise ProtocolError if refused."""
        settings = self.policy.apply(settings) if settings is not None else None
        wait = self.rate.retry_after(student.id)
        if wait > 0:
            student.refused += 1
            raise ProtocolError(f"too many requests: at most {self.rate.limit} a minute; try again in {wait:.0f} s",
                                code=protocol.RATE_LIMITED, retry_after=wait)
        self.rate.hit(student.id)
        student.requests += 1
        student.last_request = time.time()
        return settings

    def admit_control(self, sid):
        """Count a cancel, prime, score or chart event of a connection's student; raise ProtocolError past the limit.

        Counted per student, all tabs together: reconnecting starts no new count.
        """
        student = self.by_sid.get(sid)
        key = student.id if student is not None else sid
        if not self.control.allow(key):
            wait = self.control.retry_after(key)
            raise ProtocolError(f"too many events: at most {self.control.limit} a minute; try again in {wait:.0f} s",
                                code=protocol.RATE_LIMITED, retry_after=wait)

    def finished(self, sid, stats):
        """A request ended: count its tokens for its student and the class."""
        tokens = stats.get("new_tokens", 0)
        student = self.by_sid.get(sid)
        if student is not None:
            student.tokens += tokens
        self.metrics.request_done(stats.get("first_delta_ms"), tokens)

    # ---- the teacher's settings -----------------------------------------------------

    def set_policy(self, payload):
        """Validate and save the teacher's defaults and locks; return the new policy."""
        self.policy = ClassPolicy.from_payload(payload, self.max_options, self.max_length)
        self.store.save_setting(POLICY_KEY, {"defaults": self.policy.defaults, "locked": sorted(self.policy.locked)})
        return self.policy

    def _load_policy(self):
        saved = self.store.load_setting(POLICY_KEY, {})
        try:
            return ClassPolicy.from_payload(saved, self.max_options, self.max_length)
        except ProtocolError as error:  # e.g. the caps were lowered since: start clean, say why
            log.warning("ignoring the saved class settings (%s)", error)
            return ClassPolicy(max_options=self.max_options, max_length=self.max_length)

    def roster(self):
        """The dashboard's list: connected students, then those who left in the last RECENT_SECONDS; busiest first."""
        cutoff = time.time() - RECENT_SECONDS
        for student_id in [key for key, student in self.recent.items() if student.left < cutoff]:
            del self.recent[student_id]
        rows = [student.describe() for student in [*self.students.values(), *self.recent.values()]]
        return sorted(rows, key=lambda row: (row["left"] is not None, -row["requests"], row["name"]))
