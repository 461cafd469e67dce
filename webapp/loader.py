"""Load the model in the background and report its state to the page and /healthz."""
import logging
import time

from . import config as settings
from .engine import Engine
from .models import ModelError, load_model, pick_device, pick_dtype, resolve_model

log = logging.getLogger(__name__)


class ModelLoader:
    """Resolves the model at start-up, loads its weights off the hub, then starts the scheduler."""

    def __init__(self, config, runner, scheduler, on_change):
        """`on_change(status)` is called when loading ends, to tell every page."""
        self.config = config
        self.runner = runner
        self.scheduler = scheduler
        self.on_change = on_change
        self.on_error = None  # the CLI sets this to stop the process
        self.loaded = None
        self.spec = None
        self.error = None
        self.device = self.dtype = None  # resolved at start-up, shown while the model loads

    def start(self, model=None):
        """Use `model` now, or resolve the configured one (failing fast) and load it in the background."""
        if model is not None:
            self._ready(Engine(model), 0.0)
            return
        # a ModelError here stops start-up: a bad name, device or dtype never waits for the weights
        self.spec = resolve_model(self.config["MODEL"])
        self.device = pick_device(self.config["DEVICE"])
        self.dtype = str(pick_dtype(self.config["DTYPE"], self.device)).removeprefix("torch.")
        self.runner.spawn(self._load)

    def _load(self):
        started = time.monotonic()
        try:
            loaded = self.runner.run_blocking(
                load_model, self.spec, self.device, self.dtype,
                self.config["MAX_CONTEXT"], settings.cache_dir(self.config))
            engine = self.runner.run_blocking(Engine, loaded)
            self.runner.run_blocking(engine.warm_up)
        except ModelError as error:
            self._failed(str(error))
            return
        except Exception as error:  # a broken download or file: say so, do not hide it
            log.exception("loading the model failed")
            self._failed(f"loading {self.spec.name} failed: {error}")
            return
        self._ready(engine, time.monotonic() - started)

    def _ready(self, engine, seconds):
        loaded = self.loaded = engine.loaded
        log.info("model ready: %s on %s (%s) in %.1f s", loaded.name, loaded.device, loaded.dtype, seconds)
        self.scheduler.attach(engine)
        self.on_change(self.status())

    def _failed(self, message):
        self.error = message
        log.error("%s", message)
        self.on_change(self.status())
        if self.on_error:
            self.on_error(message)

    def status(self):
        """What the status bar and /healthz show about the model."""
        if self.loaded is not None:
            model = self.loaded
            return {"ready": True, "loading": False, "model": model.name, "device": model.device,
                    "dtype": model.dtype, "max_context": model.max_context, "warning": model.warning,
                    "error": None}
        return {"ready": False, "loading": self.error is None, "model": self.spec.name if self.spec else None,
                "device": self.device, "dtype": self.dtype, "max_context": None,
                "warning": self.spec.warning if self.spec else None, "error": self.error}
