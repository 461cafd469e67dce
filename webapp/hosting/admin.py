"""The teacher's dashboard: live figures, the students, class settings and published documents."""
import os
import sys

from flask import Blueprint, current_app, jsonify, render_template, request, url_for

from ..generation.settings import RANGES, SEED_RANGE, SamplingSettings
from ..web import protocol
from ..web.protocol import CHOICES, ProtocolError
from .access import admin_only
from .policy import LOCKABLE
from .sharing import qr_svg, share_url

admin = Blueprint("admin", __name__, url_prefix="/admin")


def _parts():
    extensions = current_app.extensions
    return extensions["tabwrite"], extensions["tabwrite.classroom"], extensions["socketio"]


@admin.get("")
@admin_only
def dashboard():
    """The dashboard page; its script fetches /admin/api/state every two seconds."""
    _, classroom, _ = _parts()
    url = share_url(current_app.config["HOST"], current_app.config["PORT"])
    return render_template("admin.html", share_url=url, qr=qr_svg(url), code=classroom.code,
                           lockable=LOCKABLE, ranges={**RANGES, "seed": SEED_RANGE}, choices=CHOICES,
                           defaults=SamplingSettings())


@admin.get("/api/state")
@admin_only
def state():
    """Everything the dashboard shows, as JSON."""
    models, classroom, _ = _parts()
    documents = [{"id": d.id, "author": d.author, "created": d.created, "chars": len(d.text),
                  "url": url_for("documents.show", document_id=d.id)} for d in classroom.store.documents()]
    return jsonify({
        "model": models.status(),
        "queue": {**models.load(), "limit": models.scheduler.max_queue},
        "summary": classroom.metrics.summary(),
        "history": classroom.metrics.history(),
        "students": classroom.roster(),
        "documents": documents,
        "policy": classroom.policy.to_payload(),
        "memory": process_memory(),
    })


@admin.post("/api/students/<student_id>/disconnect")
@admin_only
def disconnect(student_id):
    """Sign a student out: end their session and close their connections."""
    _, classroom, socketio = _parts()
    sids = classroom.sign_out(student_id)
    notice = ProtocolError("the teacher signed you out; reload the page to join again", code=protocol.SIGNED_OUT)
    for sid in sids:
        socketio.emit(protocol.ERROR, protocol.error_payload(None, notice), to=sid)
        socketio.server.disconnect(sid, namespace="/")
    return jsonify({"disconnected": len(sids)})


@admin.post("/api/policy")
@admin_only
def set_policy():
    """Save class-wide defaults and locks and send them to every open page."""
    _, classroom, socketio = _parts()
    try:
        policy = classroom.set_policy(request.get_json(silent=True))
    except ProtocolError as error:
        return jsonify({"error": str(error), "field": error.field}), 400
    socketio.emit(protocol.POLICY, policy.to_payload())
    return jsonify(policy.to_payload())


def process_memory():
    """Resident memory of this process, and the GPU's allocated memory when a GPU serves."""
    memory = {"rss_mb": None}
    try:
        with open("/proc/self/statm") as statm:
            memory["rss_mb"] = round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError):  # not Linux: the peak is the best the standard library knows
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        memory["rss_mb"] = round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
    torch = sys.modules.get("torch")  # the dashboard never imports the model's libraries itself
    if torch is not None and torch.cuda.is_available():
        memory["gpu_mb"] = round(torch.cuda.memory_allocated() / 2**20, 1)
    return memory
