"""TabWrite: press TAB for streamed language-model continuations of your text.

`create_app` wires everything: configuration, the model loader, the scheduler,
the Socket.IO events and the HTTP views. Read it to know the whole app.
"""


def create_app(config=None, model=None):
    """Build the app; `model` (a LoadedModel) skips loading, as tests and benchmarks do."""
    # Imported here, not at the top: `tabwrite` must let eventlet monkey-patch the
    # standard library before Flask and its friends are imported.
    import secrets

    from flask import Flask
    from flask_socketio import SocketIO

    from . import config as settings
    from .concurrency import Runner
    from .events import register_events
    from .loader import ModelLoader
    from .protocol import STATUS
    from .scheduler import Scheduler
    from .views import views

    app = Flask(__name__, static_folder="../static", template_folder="../templates")
    app.config.from_mapping(settings.DEFAULTS)
    app.config.update(settings.from_env())
    app.config.update(config or {})
    app.config["SECRET_KEY"] = app.config["SECRET_KEY"] or secrets.token_hex(32)

    socketio = SocketIO(app, async_mode=app.config["ASYNC_MODE"],
                        max_http_buffer_size=4 * app.config["MAX_TEXT_CHARS"] + 4096)
    runner = Runner(socketio)
    scheduler = Scheduler(runner, socketio.emit, max_queue=app.config["MAX_QUEUE"],
                          kv_budget_bytes=app.config["KV_CACHE_MB"] << 20, keep_sets=app.config["KEEP_SETS"])
    loader = ModelLoader(app.config, runner, scheduler, on_change=lambda status: socketio.emit(STATUS, status))
    app.extensions["tabwrite"] = loader
    register_events(socketio, scheduler, loader, app.config["MAX_TEXT_CHARS"])
    app.register_blueprint(views)
    loader.start(model)
    return app
