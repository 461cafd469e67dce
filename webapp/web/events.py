"""Socket.IO handlers: admit the connection, validate the payload, apply the class's limits, queue."""
import functools

from flask import request
from flask_socketio import ConnectionRefusedError

from ..hosting.access import SESSION_COOKIE
from ..hosting.classroom import TooManyConnections
from . import protocol
from .protocol import (
    CancelRequest,
    DistributionRequest,
    ExtendRequest,
    PrimeRequest,
    ProtocolError,
    ScoreRequest,
    SuggestRequest,
)

REFUSED_TRANSPORT_SECONDS = 1.0  # a refused connection's transport is closed this long after the refusal is sent


def register_events(socketio, models, classroom, max_text_chars):
    """Attach TabWrite's event handlers to `socketio`; `models` is the ModelSet (each model has its scheduler)."""

    def reply_error(payload, error):
        socketio.emit(protocol.ERROR, protocol.error_payload(protocol.request_id_of(payload), error), to=request.sid)

    def submit(request_, model):
        """Hand an admitted request to its model's scheduler, counting it (or the `busy` refusal)."""
        try:
            models.scheduler_for(model).submit(request.sid, request_, owner=classroom.student_of(request.sid).id)
        except ProtocolError as error:
            if error.code == protocol.BUSY:
                classroom.metrics.request_refused_busy()
            raise
        classroom.metrics.request_received(models.depth())

    def refuse(message, data):
        """Refuse this connection and close its transport too (a refused client keeps nothing open)."""
        eio_sid = socketio.server.manager.eio_sid_from_sid(request.sid, "/")
        socketio.start_background_task(close_transport, eio_sid)
        raise ConnectionRefusedError(message, data)

    def close_transport(eio_sid):
        socketio.sleep(REFUSED_TRANSPORT_SECONDS)  # the refusal reaches the client first
        socketio.server.eio.disconnect(eio_sid)

    @socketio.on("connect")
    def on_connect(auth=None):
        session = classroom.session_for(request.cookies.get(SESSION_COOKIE))
        if session is None and classroom.code:
            # the page sees this message in `connect_error` and sends the student to /join
            refuse("join the class first: enter the class code", {"code": "join"})
        try:
            classroom.connect(request.sid, session, request.remote_addr or "?")
        except TooManyConnections as error:
            refuse(str(error), {"code": "too_many_connections"})
        socketio.emit(protocol.STATUS, models.status(), to=request.sid)
        socketio.emit(protocol.POLICY, classroom.policy.to_payload(), to=request.sid)

    @socketio.on("disconnect")
    def on_disconnect(reason=None):
        for scheduler in models.schedulers:
            scheduler.disconnect(request.sid, reason)
        classroom.disconnect(request.sid)

    def replying_errors(handler):
        """Run `handler(payload)`; a ProtocolError it raises becomes an `error` reply to this client."""

        @functools.wraps(handler)
        def guarded(payload=None):
            try:
                handler(payload)
            except ProtocolError as error:
                reply_error(payload, error)

        return guarded

    @socketio.on(protocol.SUGGEST)
    @replying_errors
    def on_suggest(payload):
        suggest = SuggestRequest.from_payload(payload, max_text_chars, classroom.policy.base())
        settings = classroom.admit(classroom.student_of(request.sid), suggest.settings)
        submit(SuggestRequest(suggest.id, suggest.text, settings), settings.model)

    @socketio.on(protocol.EXTEND)
    @replying_errors
    def on_extend(payload):
        extend = ExtendRequest.from_payload(payload)
        overrides = classroom.policy.apply_overrides(extend.settings)
        classroom.admit(classroom.student_of(request.sid), None)
        # the page names the set's model; the parent is looked for in that model's scheduler
        submit(ExtendRequest(extend.id, extend.parent, overrides), extend.settings.get("model"))

    @socketio.on(protocol.PRIME)
    @replying_errors
    def on_prime(payload):
        classroom.admit_control(request.sid)
        # not queued: one pending text per tab, read only while the model is idle
        prime = PrimeRequest.from_payload(payload, max_text_chars, classroom.policy.base())
        settings = classroom.policy.apply(prime.settings)
        models.scheduler_for(settings.model).prime(request.sid, PrimeRequest(prime.id, prime.text, settings))

    @socketio.on(protocol.SCORE)
    @replying_errors
    def on_score(payload):
        classroom.admit_control(request.sid)
        score = ScoreRequest.from_payload(payload, max_text_chars)
        models.scheduler_for(score.model).score(request.sid, score)

    @socketio.on(protocol.DISTRIBUTION)
    @replying_errors
    def on_distribution(payload):
        classroom.admit_control(request.sid)
        # idle-time work like `score`; a settings change on the same text is answered without the model
        asked = DistributionRequest.from_payload(payload, max_text_chars, classroom.policy.base())
        settings = classroom.policy.apply(asked.settings)
        models.scheduler_for(settings.model).distribution(request.sid,
                                                          DistributionRequest(asked.id, asked.text, settings))

    @socketio.on(protocol.CANCEL)
    @replying_errors
    def on_cancel(payload):
        classroom.admit_control(request.sid)
        request_id = CancelRequest.from_payload(payload).id
        for scheduler in models.schedulers:  # ids are the client's own: only the one running it has it
            scheduler.cancel(request.sid, request_id)
