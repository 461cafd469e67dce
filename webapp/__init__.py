"""TabWrite: press TAB for streamed language-model continuations of your text.

`create_app` wires everything: configuration, the model loader, the scheduler,
the classroom (sessions, limits, class settings), the Socket.IO events and the
HTTP views. Read it to know the whole app.
"""


PING_TIMEOUT_SECONDS = 60  # Engine.IO's default is 20


def create_app(config=None, model=None):
    """Build the app; `model` (a LoadedModel, or a list of them) skips loading, as tests and benchmarks do."""
    # Imported here, not at the top: `tabwrite` must let eventlet monkey-patch the
    # standard library before Flask and its friends are imported.
    import secrets

    from flask import Flask
    from flask_socketio import SocketIO
    from werkzeug.middleware.proxy_fix import ProxyFix

    from . import config as settings
    from .hosting.access import (
        Gatekeeper,
        HostCheck,
        SessionInterface,
        access,
        add_security_headers,
        check_secret_key,
        refuse_foreign_posts,
    )
    from .hosting.admin import admin
    from .hosting.classroom import Classroom
    from .hosting.store import Store
    from .serving.concurrency import Runner
    from .serving.loader import ModelLoader, ModelSet
    from .serving.scheduler import Scheduler
    from .web.documents import documents
    from .web.events import register_events
    from .web.protocol import STATUS
    from .web.views import views

    app = Flask(__name__, static_folder="../static", template_folder="../templates")
    app.config.from_mapping(settings.DEFAULTS)
    app.config.update(settings.from_env())
    app.config.update(config or {})
    app.config["SECRET_KEY"] = check_secret_key(app.config)
    app.config["ADMIN_TOKEN"] = app.config["ADMIN_TOKEN"] or secrets.token_urlsafe(12)
    app.config["MAX_CONTENT_LENGTH"] = 4 * app.config["PUBLISH_MAX_CHARS"] + 4096  # bytes of one HTTP request
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.session_interface = SessionInterface()

    classroom = Classroom(Store(settings.database_path(app.config), app.config["SESSION_DAYS"]), app.config)
    gatekeeper = Gatekeeper(app.config, classroom)
    # a generous ping timeout: on a machine whose cores the model keeps busy, pings can come late, and a dropped
    # connection loses its requests (the page says so and the student asks again)
    socketio = SocketIO(app, async_mode=app.config["ASYNC_MODE"], cors_allowed_origins=gatekeeper.origin_allowed,
                        max_http_buffer_size=app.config["MAX_MESSAGE_BYTES"], ping_timeout=PING_TIMEOUT_SECONDS)
    # outermost first: the proxy's headers are believed, then the host it forwarded is checked
    if app.config["ALLOWED_HOSTS"]:
        app.wsgi_app = HostCheck(app.wsgi_app, app.config["ALLOWED_HOSTS"].split(","))
    if app.config["TRUSTED_PROXIES"]:
        proxies = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)
    runner = Runner(socketio)
    given = model if isinstance(model, list) else [model] if model is not None else None

    def new_loader(requested):
        """One served model: its own scheduler (queue, caches, loop) and its loader."""
        scheduler = Scheduler(runner, socketio.emit, max_queue=app.config["MAX_QUEUE"],
                              kv_budget_bytes=app.config["KV_CACHE_MB"] << 20, keep_sets=app.config["KEEP_SETS"],
                              prefix_budget_bytes=app.config["PREFIX_CACHE_MB"] << 20)
        scheduler.on_finish = classroom.finished
        return ModelLoader(app.config, runner, scheduler, on_change=lambda: socketio.emit(STATUS, models.status()),
                           requested=requested)

    requested = [loaded.name for loaded in given] if given else settings.model_names(app.config)
    models = ModelSet([new_loader(name) for name in requested], runner, app.config["MODELS_MEMORY_MB"] << 20)
    app.extensions.update({"tabwrite": models, "tabwrite.classroom": classroom, "tabwrite.access": gatekeeper})
    register_events(socketio, models, classroom, app.config["MAX_TEXT_CHARS"])
    for blueprint in (views, access, admin, documents):
        app.register_blueprint(blueprint)
    app.before_request(refuse_foreign_posts)
    app.after_request(add_security_headers)
    models.start(given)
    return app
