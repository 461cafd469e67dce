"""A hostile student in the room: three honest students write on while a fourth tries, in turn, every way
found to fail, freeze or lock out the class; the honest ones never notice.

A real server (`python -m webapp`, eventlet, the embedded model, a class code) and python-socketio clients
over websockets.
Each honest student first writes its rounds alone; then, while the hostile student works through the
list, writes them again and again: every text must equal what it got alone, and none of them may get
`busy`, `internal` or 429. That no honest request loses a turn to the hostile one is checked in
tests/serving/test_turns.py, where the scheduler's turns can be watched; here the longest gap between an
honest student's deltas is printed (a turn: PREFILL_SLICE, one beam-search call of at most the engine's
beam_seconds, and one batched step), never asserted.
"""
import threading

import requests
import socketio
from conftest import WAIT, Recorder, RunningServer

CODE = "owl-42"
ADMIN = "teacher-token-123456"
ROUNDS = [("The river ran past the old mill and", 11), ("Once upon a time, in a small town,", 12),
          ("Dear diary, today I learned that", 13)]
# greedy, so that a text is the same to the bit whether its steps ran alone or beside others (a sampled one could
# differ where two tokens' probabilities tie within float32's rounding, which a batch's other shapes move)
SETTINGS = {"n": 3, "length": 16, "stop_at": "length", "max_time": 30, "temperature": 0}
LONG_TEXT = " ".join(["The history of the old town begins with a bridge over the river."] * 40)
JUST_TWO = {"length": 2, "stop_at": "length"}


def join(url, name):
    """The Cookie header of a fresh session, as a browser gets it (None when refused), and the answer's status."""
    answer = requests.post(url + "/join", data={"name": name, "code": CODE}, allow_redirects=False, timeout=WAIT)
    cookie = answer.cookies.get("tabwrite_session")
    return ({"Cookie": f"tabwrite_session={cookie}"} if cookie else None), answer.status_code


def write_round(student, ask, index):
    """A suggest, then one extend of it; the two sets of options."""
    text, seed = ROUNDS[index]
    student.client.emit("suggest", {"id": ask, "text": text, "settings": {**SETTINGS, "seed": seed}})
    _, first = student.wait("done", ask)
    student.client.emit("extend", {"id": ask + "x", "parent": ask})
    _, longer = student.wait("done", ask + "x")
    return first["options"], longer["options"]


class HonestStudent:
    """Writes its rounds alone first, then again and again until told to stop, checking each against alone."""

    def __init__(self, url, name):
        headers, status = join(url, name)
        assert status == 302
        self.name, self.client = name, Recorder(url, headers=headers)
        self.alone = {index: write_round(self.client, f"{name}-alone-{index}", index) for index in range(len(ROUNDS))}
        self.rounds, self.failure = 0, None

    def write_until(self, stop):
        try:
            while not stop.is_set() or self.rounds < len(ROUNDS):
                index = self.rounds % len(ROUNDS)
                got = write_round(self.client, f"{self.name}-{self.rounds}", index)
                assert got == self.alone[index], f"{self.name}'s round {self.rounds} differs from alone"
                self.rounds += 1
        except BaseException as error:  # reported by the test
            self.failure = error

    def error_codes(self):
        return [data.get("code") for _, event, data in self.client.events if event == "error"]

    def longest_gap(self):
        """Seconds between two deltas of one request, the longest."""
        deltas = [(at, data["id"]) for at, event, data in self.client.events if event == "delta"]
        return max((later - earlier for (earlier, first), (later, second) in zip(deltas, deltas[1:])
                    if first == second), default=0.0)


def hostile_student(url, log):
    """Every payload of the class's findings, in turn; `log` gets what each was answered."""
    headers, _ = join(url, "Mallory")
    me = Recorder(url, headers=headers)
    try:
        me.client.emit("suggest", {"id": "cold", "text": "Hello", "settings": {"temperature": 1e-40}})
        log["tiny temperature"] = me.wait("error", "cold")[1]["code"]
        me.client.emit("suggest", {"id": "base", "text": "Hello", "settings": JUST_TWO})
        me.wait("done", "base")
        me.client.emit("extend", {"id": "colder", "parent": "base", "settings": {"temperature": 1e-40}})
        log["tiny temperature on extend"] = me.wait("error", "colder")[1]["code"]
        me.client.emit("suggest", {"id": "beam", "text": LONG_TEXT, "settings": {
            "mode": "beam", "n": 4, "beams": 8, "length": 64, "max_time": 30}})
        log["beam search"] = me.wait("done", "beam")[1]["finish"]
        for index in range(200):
            me.client.emit("cancel", {"id": f"c{index}"})
        me.client.emit("suggest", {"id": "after-cancels", "text": "Hello", "settings": JUST_TWO})
        log["after 200 cancels"] = me.wait("done", "after-cancels")[1]["finish"]
        log["connections refused"] = open_many(url, headers, 300)
        log["admin tokens"] = [requests.post(url + "/admin/login", data={"token": f"guess{index}"},
                                             timeout=WAIT).status_code for index in range(7)]
        log["late joiner"] = join(url, "Dee")[1]  # a classmate who comes late is not locked out
        log["re-joins"] = [join(url, f"Mallory {index}")[1] for index in range(70)]
        me.client.emit("suggest", {"id": "last", "text": "Hello", "settings": JUST_TWO})
        log["last"] = me.wait("done", "last")[1]["finish"]
    finally:
        me.close()


def open_many(url, headers, count):
    """Try to open `count` more connections of one session; how many the server refused."""
    opened, refused = [], 0
    for _ in range(count):
        client = socketio.Client(reconnection=False)
        try:
            client.connect(url, headers=headers, transports=["websocket"], wait_timeout=WAIT)
            opened.append(client)
        except socketio.exceptions.ConnectionError:
            refused += 1
    for client in opened:
        client.disconnect()
    return refused


def test_a_hostile_student_cannot_fail_freeze_or_lock_out_the_class(embedded):
    # the honest students write as fast as the server answers, far past a person's pace: no rate limit for them
    server = RunningServer("embedded", {"TABWRITE_MAX_CONNECTIONS_PER_STUDENT": "12",
                                            "TABWRITE_JOINS_PER_MINUTE": "60", "TABWRITE_REQUESTS_PER_MINUTE": "5000"},
                           args=["--access-code", CODE, "--admin-token", ADMIN]).wait_ready()
    honest, log, stop = [], {}, threading.Event()
    try:
        honest = [HonestStudent(server.url, name) for name in ("Ada", "Ben", "Cy")]
        writing = [threading.Thread(target=student.write_until, args=(stop,)) for student in honest]
        for thread in writing:
            thread.start()
        try:
            hostile_student(server.url, log)
        finally:
            stop.set()
            for thread in writing:
                thread.join(timeout=WAIT * 4)
        assert requests.get(server.url + "/healthz", timeout=WAIT).json()["ready"]
    finally:
        for student in honest:
            student.client.close()
        server.stop()

    for student in honest:
        assert student.failure is None, student.failure
        assert student.rounds >= len(ROUNDS) and not student.error_codes(), (student.name, student.error_codes())
    assert log["tiny temperature"] == log["tiny temperature on extend"] == "invalid"
    assert set(log["beam search"]) <= {"time", "length", "eos", "context"}
    assert log["after 200 cancels"] == log["last"] == ["length"] * 3
    assert log["connections refused"] == 300 - 11, "a session has at most 12 connections, its first among them"
    assert log["admin tokens"][:5] == [403] * 5 and log["admin tokens"][5:] == [429, 429]
    assert log["late joiner"] == 302, "wrong admin tokens never lock the class code"
    # joining again is no reset: an address starts at most JOINS_PER_MINUTE sessions a minute (the 70 in a burst)
    assert log["re-joins"].count(302) <= 60 and log["re-joins"][-1] == 429
    print("longest gap between an honest student's deltas: "
          f"{max(student.longest_gap() for student in honest):.3f} s")
