"""The SQLite file that outlives a restart: student sessions, published documents, class settings.

Each call opens its own short connection: calls are rare (a join, a publish, a page
load) and this keeps the store safe from any thread or green thread without a lock.
"""
import hashlib
import json
import secrets
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,   -- sha256 of the cookie value; the value itself is never stored
    student_id TEXT NOT NULL,
    name TEXT NOT NULL,
    code_hash TEXT NOT NULL,       -- the class code it was made with; a new code ends old sessions
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    student_id TEXT NOT NULL,
    author TEXT NOT NULL,
    text TEXT NOT NULL,
    model TEXT NOT NULL,
    settings TEXT NOT NULL,        -- JSON
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS class_settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL            -- JSON
);
"""


@dataclass(frozen=True)
class Session:
    """A joined student, as read back from the cookie."""

    student_id: str
    name: str


@dataclass(frozen=True)
class Document:
    """A published, read-only document."""

    id: str
    student_id: str
    author: str
    text: str
    model: str
    settings: dict
    created: float


def digest(value):
    """A hex sha256 of `value`, for tokens and codes that must not be stored as they are."""
    return hashlib.sha256(value.encode()).hexdigest()


class Store:
    """Reads and writes the database file at `path`, creating it on first use."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers do not wait for a writer
            db.executescript(SCHEMA)

    def _connect(self):
        return closing(sqlite3.connect(self.path, timeout=10, isolation_level=None))

    # ---- sessions ----------------------------------------------------------------------

    def create_session(self, name, code):
        """Make a session for `name`; return (cookie token, Session)."""
        token = secrets.token_urlsafe(32)
        session = Session(student_id=secrets.token_hex(8), name=name)
        with self._connect() as db:
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                       (digest(token), session.student_id, name, digest(code), time.time()))
        return token, session

    def find_session(self, token, code):
        """The session behind a cookie token, if it was made with the current class code."""
        if not token:
            return None
        with self._connect() as db:
            row = db.execute("SELECT student_id, name FROM sessions WHERE token_hash = ? AND code_hash = ?",
                             (digest(token), digest(code))).fetchone()
        return Session(*row) if row else None

    def end_sessions(self, student_id):
        """Sign a student out everywhere (the teacher's 'disconnect')."""
        with self._connect() as db:
            db.execute("DELETE FROM sessions WHERE student_id = ?", (student_id,))

    # ---- documents ---------------------------------------------------------------------

    def publish(self, session, text, model, settings):
        """Store a read-only copy of a document; return its unguessable id."""
        document_id = secrets.token_urlsafe(16)  # 128 random bits
        with self._connect() as db:
            db.execute("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (document_id, session.student_id, session.name, text, model, json.dumps(settings),
                        time.time()))
        return document_id

    def document(self, document_id):
        """One published document, or None."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM documents WHERE id = ?", (document_id,)).fetchone()
        return _document(row) if row else None

    def documents(self, limit=200):
        """The most recently published documents, newest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM documents ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [_document(row) for row in rows]

    def count_documents(self, student_id):
        """How many documents a student has published."""
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM documents WHERE student_id = ?", (student_id,)).fetchone()[0]

    # ---- class settings ----------------------------------------------------------------

    def load_setting(self, key, default):
        """A class-wide setting saved by the teacher."""
        with self._connect() as db:
            row = db.execute("SELECT value FROM class_settings WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def save_setting(self, key, value):
        """Save a class-wide setting."""
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO class_settings VALUES (?, ?)", (key, json.dumps(value)))


def _document(row):
    document_id, student_id, author, text, model, settings, created = row
    return Document(document_id, student_id, author, text, model, json.loads(settings), created)
