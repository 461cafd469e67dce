"""Socket.IO handlers: validate the payload, hand it to the scheduler, return."""
from flask import request

from . import protocol
from .protocol import CancelRequest, ExtendRequest, ProtocolError, SuggestRequest


def register_events(socketio, scheduler, loader, max_text_chars):
    """Attach TabWrite's event handlers to `socketio`."""

    def reply_error(payload, error):
        socketio.emit(protocol.ERROR, protocol.error_payload(protocol.request_id_of(payload), error), to=request.sid)

    @socketio.on("connect")
    def on_connect(auth=None):
        socketio.emit(protocol.STATUS, loader.status(), to=request.sid)

    @socketio.on("disconnect")
    def on_disconnect(reason=None):
        scheduler.disconnect(request.sid)

    @socketio.on(protocol.SUGGEST)
    def on_suggest(payload=None):
        try:
            scheduler.submit(request.sid, SuggestRequest.from_payload(payload, max_text_chars))
        except ProtocolError as error:
            reply_error(payload, error)

    @socketio.on(protocol.EXTEND)
    def on_extend(payload=None):
        try:
            scheduler.submit(request.sid, ExtendRequest.from_payload(payload))
        except ProtocolError as error:
            reply_error(payload, error)

    @socketio.on(protocol.CANCEL)
    def on_cancel(payload=None):
        try:
            scheduler.cancel(request.sid, CancelRequest.from_payload(payload).id)
        except ProtocolError as error:
            reply_error(payload, error)
