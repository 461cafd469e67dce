"""Socket.IO handlers: admit the connection, validate the payload, apply the class's limits, queue."""
import functools

from flask import request
from flask_socketio import ConnectionRefusedError

from . import protocol
from .access import SESSION_COOKIE
from .protocol import (CancelRequest, DistributionRequest, ExtendRequest, PrimeRequest, ProtocolError, ScoreRequest,
                       SuggestRequest)


def register_events(socketio, scheduler, loader, classroom, max_text_chars):
    """Attach TabWrite's event handlers to `socketio`."""

    def reply_error(payload, error):
        socketio.emit(protocol.ERROR, protocol.error_payload(protocol.request_id_of(payload), error), to=request.sid)

    def submit(request_):
        """Hand an admitted request to the scheduler, counting it (or the `busy` refusal)."""
        try:
            scheduler.submit(request.sid, request_, owner=classroom.student_of(request.sid).id)
        except ProtocolError as error:
            if error.code == protocol.BUSY:
                classroom.metrics.request_refused_busy()
            raise
        classroom.metrics.request_received(scheduler.depth())

    @socketio.on("connect")
    def on_connect(auth=None):
        session = classroom.session_for(request.cookies.get(SESSION_COOKIE))
        if session is None and classroom.code:
            # the page sees this message in `connect_error` and sends the student to /join
            raise ConnectionRefusedError("join the class first: enter the class code", {"code": "join"})
        classroom.connect(request.sid, session)
        socketio.emit(protocol.STATUS, loader.status(), to=request.sid)
        socketio.emit(protocol.POLICY, classroom.policy.to_payload(), to=request.sid)

    @socketio.on("disconnect")
    def on_disconnect(reason=None):
        scheduler.disconnect(request.sid)
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
        submit(SuggestRequest(suggest.id, suggest.text, settings))

    @socketio.on(protocol.EXTEND)
    @replying_errors
    def on_extend(payload):
        extend = ExtendRequest.from_payload(payload)
        overrides = classroom.policy.apply_overrides(extend.settings)
        classroom.admit(classroom.student_of(request.sid), None)
        submit(ExtendRequest(extend.id, extend.parent, overrides))

    @socketio.on(protocol.PRIME)
    @replying_errors
    def on_prime(payload):
        # not rate-limited or queued: one pending text per tab, read only while the model is idle
        prime = PrimeRequest.from_payload(payload, max_text_chars, classroom.policy.base())
        scheduler.prime(request.sid, PrimeRequest(prime.id, prime.text, classroom.policy.apply(prime.settings)))

    @socketio.on(protocol.SCORE)
    @replying_errors
    def on_score(payload):
        scheduler.score(request.sid, ScoreRequest.from_payload(payload, max_text_chars))

    @socketio.on(protocol.DISTRIBUTION)
    @replying_errors
    def on_distribution(payload):
        # idle-time work like `score`; a settings change on the same text is answered without the model
        asked = DistributionRequest.from_payload(payload, max_text_chars, classroom.policy.base())
        scheduler.distribution(request.sid, DistributionRequest(asked.id, asked.text,
                                                                classroom.policy.apply(asked.settings)))

    @socketio.on(protocol.CANCEL)
    @replying_errors
    def on_cancel(payload):
        scheduler.cancel(request.sid, CancelRequest.from_payload(payload).id)
