"""A class at work: N students typing and pressing TAB at human pace against a real server.

Starts `python -m webapp` with a class code on a loopback port (or uses --url with
--code and --admin-token), lets every simulated student join with the code, then for
--seconds each one types a few words (at --cps characters per second), presses TAB,
reads the options for a moment, sometimes presses TAB again for longer ones, and
accepts one. Prints p50/p95/p99 time from TAB to the first words, tokens per second,
the count of every `error` code, and the server's memory at the end (from the
teacher's dashboard). `--json` writes the figures too.

    python bench/load.py                       # 30 students, 60 s, embedded model
    python bench/load.py --students 8 --seconds 30
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests
import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from webapp.hosting.metrics import percentile  # noqa: E402 (after the path is set; the dashboard's own percentile)

WORDS = ("the river school garden morning story quiet teacher window friend summer light music city "
         "bridge letter forest winter train evening market question answer journey").split()
OPENINGS = ["Yesterday our class", "The most surprising thing about", "Dear diary, today", "In the year 2050,",
            "My favourite place is", "The recipe starts with", "Scientists have found that", "Once upon a time"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the class writes")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--url", help="use a running server instead of starting one")
    parser.add_argument("--code", default="load-test", help="the class code (given to the started server)")
    parser.add_argument("--admin-token", default="load-test-admin", help="for the server's memory at the end")
    parser.add_argument("--cps", type=float, default=6.0, help="typing speed, characters per second")
    parser.add_argument("--read", type=float, default=1.5, help="seconds a student reads the options")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


class Student(threading.Thread):
    """One simulated student: join, then type / TAB / read / maybe TAB again / accept, until time is up."""

    def __init__(self, number, url, code, until, args):
        super().__init__(daemon=True)
        self.number, self.url, self.code, self.until, self.args = number, url, code, until, args
        self.random = random.Random(args.seed * 1000 + number)
        self.text = f"{self.random.choice(OPENINGS)} {self.random.choice(WORDS)}"
        self.first_delta_ms = []
        self.tokens = 0
        self.requests = 0
        self.errors = Counter()
        self.failure = None
        self.replies = {}
        self.arrived = threading.Condition()

    def run(self):
        try:
            self._write()
        except Exception as error:  # a benchmark reports a broken student, it does not hide it
            self.failure = f"{type(error).__name__}: {error}"

    def _write(self):
        answer = requests.post(self.url + "/join", data={"name": f"student {self.number}", "code": self.code},
                               allow_redirects=False, timeout=30)
        cookie = {"Cookie": f"tabwrite_session={answer.cookies['tabwrite_session']}"} if self.code else {}
        client = socketio.Client(reconnection=False)
        client.on("*", self._record)
        client.connect(self.url, headers=cookie, transports=["websocket"], wait_timeout=30)
        try:
            counter = 0
            while time.monotonic() < self.until:
                typed = " " + " ".join(self.random.choices(WORDS, k=self.random.randint(2, 6)))
                time.sleep(len(typed) / self.args.cps)
                self.text += typed
                counter += 1
                done = self._request(client, "suggest", {"id": f"s{counter}", "text": self.text})
                if done and self.random.random() < 0.3:  # a longer version, please
                    time.sleep(self.args.read / 2)
                    counter += 1
                    done = self._request(client, "extend", {"id": f"s{counter}", "parent": f"s{counter - 1}"})
                if done and done.get("options"):
                    time.sleep(self.args.read)
                    self.text += self.random.choice(done["options"])
        finally:
            client.disconnect()

    def _request(self, client, event, payload):
        """Send one request and wait for its end; return its `done`, or None after an `error`."""
        request_id = payload["id"]
        sent = time.monotonic()
        client.emit(event, payload)
        self.requests += 1
        with self.arrived:
            self.arrived.wait_for(lambda: request_id in self.replies and self.replies[request_id][-1][1]
                                  in ("done", "error"), timeout=120)
        events = self.replies.pop(request_id, [])
        first = next((t for t, name, _ in events if name == "delta"), None)
        if first is not None:
            self.first_delta_ms.append((first - sent) * 1000)
        for _, name, data in events:
            if name == "error":
                self.errors[data["code"]] += 1
                time.sleep(data.get("retry_after") or 1.0)  # as the page does: wait, then go on
                return None
            if name == "done":
                self.tokens += data["stats"].get("new_tokens", 0)
                return data
        self.errors["timeout"] += 1
        return None

    def _record(self, event, data):
        if isinstance(data, dict) and data.get("id") is not None:
            with self.arrived:
                self.replies.setdefault(data["id"], []).append((time.monotonic(), event, data))
                self.arrived.notify_all()


def start_server(args):
    """`python -m webapp` with a class code on a free loopback port, and a scratch database."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    database = Path(tempfile.mkdtemp(prefix="tabwrite-load-")) / "tabwrite.sqlite3"
    log = open(database.parent / "server.log", "w")  # noqa: SIM115 (the child writes to it until the end)
    process = subprocess.Popen(
        [sys.executable, "-m", "webapp", "--model", args.model, "--port", str(port),
         "--access-code", args.code, "--admin-token", args.admin_token],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "TABWRITE_DATABASE": str(database), "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/healthz", timeout=2).json()["ready"]:
                return process, url
        except requests.RequestException:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the server did not get ready; see {log.name}")


def server_figures(url, token):
    """Memory and the server's own view, from the teacher's dashboard API."""
    with requests.Session() as teacher:
        teacher.post(url + "/admin/login", data={"token": token}, timeout=10)
        answer = teacher.get(url + "/admin/api/state", timeout=10)
        return answer.json() if answer.ok else {}


def main():
    args = parse_args()
    process, url = (None, args.url) if args.url else start_server(args)
    try:
        health = requests.get(url + "/healthz", timeout=10).json()
        began = time.monotonic()
        students = [Student(i, url, args.code, began + args.seconds, args) for i in range(args.students)]
        for student in students:
            student.start()
            time.sleep(0.05)  # they do not all sit down in the same millisecond
        for student in students:
            student.join(args.seconds + 300)
        elapsed = time.monotonic() - began
        state = server_figures(url, args.admin_token)
    finally:
        if process:
            process.terminate()
            process.wait(20)

    waits = [ms for s in students for ms in s.first_delta_ms]
    errors = sum((s.errors for s in students), Counter())
    per_student = [len(s.first_delta_ms) for s in students]
    figures = {
        "model": health.get("model"), "device": health.get("device"), "dtype": health.get("dtype"),
        "students": args.students, "seconds": round(elapsed, 1),
        "requests": sum(s.requests for s in students),
        "first_delta_ms": {"p50": percentile(waits, 50), "p95": percentile(waits, 95), "p99": percentile(waits, 99),
                           "max": round(max(waits), 1) if waits else None},
        "tokens_per_second": round(sum(s.tokens for s in students) / elapsed, 1),
        "answered_per_student": {"min": min(per_student), "max": max(per_student)},
        "errors": dict(errors), "broken_students": [s.failure for s in students if s.failure],
        "server_rss_mb": state.get("memory", {}).get("rss_mb"),
        "server_first_delta_ms": state.get("summary", {}).get("first_delta_ms"),
    }
    print(f"\n{args.students} students for {elapsed:.0f} s on {figures['model']} "
          f"({figures['device']}, {figures['dtype']}), typing {args.cps} chars/s\n")
    print("| figure | value |\n|---|---|")
    print(f"| requests (suggest + extend) | {figures['requests']} |")
    for p in ("p50", "p95", "p99", "max"):
        print(f"| Tab → first words, {p} | {figures['first_delta_ms'][p]} ms |")
    print(f"| tokens / second (all students) | {figures['tokens_per_second']} |")
    print(f"| answered requests per student | {per_student and min(per_student)}–{per_student and max(per_student)} |")
    print(f"| `error` events | {', '.join(f'{k}: {v}' for k, v in errors.items()) or 'none'} |")
    print(f"| server memory at the end | {figures['server_rss_mb']} MB |")
    if figures["broken_students"]:
        print(f"\nBroken students: {figures['broken_students']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
