"""HTTP: the editor page, /healthz, and the Socket.IO client from node_modules."""
from pathlib import Path

from flask import Blueprint, abort, current_app, g, jsonify, render_template, send_from_directory

from ..generation.settings import RANGES, SamplingSettings
from ..hosting.access import student_page
from .lesson import load_lesson
from .protocol import CHOICES

views = Blueprint("views", __name__)

SOCKET_IO_DIST = Path(__file__).resolve().parents[2] / "node_modules" / "socket.io-client" / "dist"


@views.get("/")
@student_page
def index():
    """The editor, for a joined student (or anyone, in a class without a code)."""
    config = current_app.config
    classroom = current_app.extensions["tabwrite.classroom"]
    lesson = load_lesson()
    return render_template("index.html", defaults=SamplingSettings(), ranges=RANGES, choices=CHOICES,
                           presets=lesson["presets"], examples=lesson["examples"],
                           caps=classroom.policy.to_payload()["caps"],
                           status=current_app.extensions["tabwrite"].status(), student=g.session,
                           class_code=bool(classroom.code), max_text_chars=config["MAX_TEXT_CHARS"])


@views.get("/healthz")
def healthz():
    """Whether the model is ready, and which model, device and dtype serve."""
    models = current_app.extensions["tabwrite"]
    return jsonify({**models.status(), "queue": models.load()})


@views.get("/vendor/socket.io/<path:filename>")
def socket_io_client(filename):
    """The npm-installed socket.io-client, served as is (run `npm ci` first)."""
    if not SOCKET_IO_DIST.is_dir():
        abort(404, "socket.io-client is not installed: run `npm ci` (make run does it)")
    return send_from_directory(SOCKET_IO_DIST, filename)
