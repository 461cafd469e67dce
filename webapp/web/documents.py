"""Published documents: a student's text frozen at a read-only, unguessable link."""
import dataclasses

from flask import Blueprint, abort, current_app, jsonify, render_template, request, url_for

from ..hosting.access import (
    SESSION_COOKIE,
    TooManySessions,
    gatekeeper,
    resolve_session,
    set_session_cookie,
    too_many_sessions_response,
)
from .protocol import ProtocolError, parse_settings

documents = Blueprint("documents", __name__)


@documents.post("/api/publish")
def publish():
    """Store the posted document with the model and settings used; answer its link."""
    try:
        session, new_token = resolve_session()
    except TooManySessions as error:
        return too_many_sessions_response(error, as_json=True)
    if session is None:
        return jsonify({"error": "join the class first"}), 401
    config = current_app.config
    classroom = current_app.extensions["tabwrite.classroom"]
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        return jsonify({"error": "send {text, settings} as JSON"}), 400
    text = payload["text"]
    if not text.strip():
        return jsonify({"error": "there is nothing to publish yet"}), 400
    if len(text) > config["PUBLISH_MAX_CHARS"]:
        return jsonify({"error": f"a published document is at most {config['PUBLISH_MAX_CHARS']} characters"}), 413
    try:
        settings = parse_settings(payload.get("settings"))
    except ProtocolError as error:
        return jsonify({"error": str(error), "field": error.field}), 400
    if classroom.store.count_documents(session.student_id) >= config["PUBLISHED_PER_STUDENT"]:
        most = config["PUBLISHED_PER_STUDENT"]
        return jsonify({"error": f"you have published {most} documents, the most allowed"}), 403
    if classroom.store.count_documents() >= config["PUBLISHED_PER_CLASS"]:
        most = config["PUBLISHED_PER_CLASS"]
        return jsonify({"error": f"the class has published {most} documents, the most allowed"}), 403
    model = current_app.extensions["tabwrite"].status()["model"]
    document_id = classroom.store.publish(session, text, model, dataclasses.asdict(settings))
    response = jsonify({"id": document_id, "url": url_for("documents.show", document_id=document_id)})
    if new_token:
        set_session_cookie(response, new_token)
    return response, 201


@documents.get("/d/<document_id>")
def show(document_id):
    """A published document, read-only; in a class with a code, for its students and teacher only."""
    keeper = gatekeeper()
    joined = keeper.classroom.session_for(request.cookies.get(SESSION_COOKIE)) is not None
    if keeper.classroom.code and not joined and not keeper.is_admin():
        abort(404)  # a stranger learns nothing, not even that the document exists
    document = current_app.extensions["tabwrite.classroom"].store.document(document_id)
    if document is None:
        abort(404)
    return render_template("document.html", document=document)
