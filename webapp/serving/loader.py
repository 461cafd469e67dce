"""Load the served models in the background, one after another, and report their state to the page and /healthz."""
import gc
import logging
import time

from .. import config as settings
from ..generation.engine import Engine
from ..models.loading import ModelError, estimate_weight_bytes, load_model, pick_device, pick_dtype, resolve_model
from ..web.protocol import ProtocolError

log = logging.getLogger(__name__)


class ModelLoader:
    """One model: resolved at start-up (failing fast), loaded off the hub, then served by its own scheduler."""

    def __init__(self, config, runner, scheduler, on_change, requested=None):
        """`on_change()` is called when loading ends; `requested` is one --model value."""
        self.config = config
        self.runner = runner
        self.scheduler = scheduler
        self.on_change = on_change
        self.requested = requested
        self.on_error = None  # the CLI sets this to stop the process
        self.required = True  # a model the server cannot serve without: failing to load it calls on_error
        self.loaded = None
        self.spec = None
        self.error = None
        self.device = self.dtype = None  # resolved at start-up, shown while the model loads

    @property
    def name(self):
        """What requests and the page call this model."""
        return self.loaded.name if self.loaded else self.spec.name if self.spec else self.requested

    def resolve(self):
        """Decide where the weights come from, and the device and dtype; a ModelError here stops start-up."""
        self.spec = resolve_model(self.requested)
        self.device = pick_device(self.config["DEVICE"])
        self.dtype = pick_dtype(self.config["DTYPE"], self.device, self.spec)

    def weight_bytes(self):
        """Memory the weights will take, from the model's configuration (nothing is loaded)."""
        return self.runner.run_blocking(estimate_weight_bytes, self.spec, self.dtype, settings.cache_dir(self.config),
                                        self.device)

    def load(self):
        """Read the weights and warm the engine up (call from a green thread); True when the model serves."""
        started = time.monotonic()
        try:
            loaded = self.runner.run_blocking(
                load_model, self.spec, self.device, self.dtype,
                self.config["MAX_CONTEXT"], settings.cache_dir(self.config))
            engine = self.runner.run_blocking(Engine, loaded)
            self.runner.run_blocking(engine.warm_up)
        except ModelError as error:
            self.fail(str(error))
            return False
        except Exception as error:  # a broken download or file: say so, do not hide it
            log.exception("loading the model failed")
            self.fail(f"loading {self.spec.name} failed: {error}")
            return False
        self.ready(engine, time.monotonic() - started)
        return True

    def ready(self, engine, seconds):
        loaded = self.loaded = engine.loaded
        log.info("model ready: %s on %s (%s) in %.1f s", loaded.name, loaded.device, loaded.dtype, seconds)
        self.scheduler.attach(engine)
        self.on_change()

    def fail(self, message):
        self.error = message
        log.error("%s", message)
        self.on_change()
        if self.required and self.on_error:
            self.on_error(message)

    def status(self):
        """What the status bar and /healthz show about this model."""
        if self.loaded is not None:
            model = self.loaded
            return {"ready": True, "loading": False, "model": model.name, "device": model.device,
                    "dtype": model.dtype, "max_context": model.max_context, "parameters": model.parameters,
                    "warning": model.warning, "error": None}
        return {"ready": False, "loading": self.error is None, "model": self.name, "device": self.device,
                "dtype": self.dtype, "max_context": None, "parameters": None,
                "warning": self.spec.warning if self.spec else None, "error": self.error}


class ModelSet:
    """Every served model by name, each with its loader and scheduler; the first one is the default.

    Models load one after another (the default first), each only if its weights fit in
    what is left of the memory budget; one that does not fit is reported, not loaded.
    """

    def __init__(self, loaders, runner, budget_bytes):
        """`loaders`: one ModelLoader per --model, the default first; `budget_bytes` 0 means no limit."""
        self.loaders = loaders
        self.runner = runner
        self.budget_bytes = budget_bytes
        for loader in loaders[1:]:
            loader.required = False  # the others are extras: the server goes on without them

    # ---- start-up --------------------------------------------------------------------

    def start(self, models=None):
        """Serve `models` (LoadedModels, as tests pass) now, or resolve every configured one and load them."""
        if models is not None:
            for loader, model in zip(self.loaders, models):
                loader.ready(Engine(model), 0.0)
            return
        for loader in self.loaders:
            loader.resolve()  # a bad name, device or dtype never waits for any weights
        names = [loader.name for loader in self.loaders]
        if len(set(names)) < len(names):
            raise ModelError(f"--model names the same model twice: {', '.join(names)}")
        self.runner.spawn(self._load_all)

    def _load_all(self):
        used = 0
        for loader in self.loaders:
            needed = 0
            if self.budget_bytes:
                try:
                    needed = loader.weight_bytes()
                except Exception as error:  # cannot tell: the loader's own error will say more
                    log.warning("could not size %s before loading: %s", loader.name, error)
            if self.budget_bytes and used + needed > self.budget_bytes:
                loader.fail(f"{loader.name} was not loaded: its weights need {needed >> 20} MB and "
                            f"{(self.budget_bytes - used) >> 20} MB of MODELS_MEMORY_MB is left")
                continue
            if loader.load():
                used += needed
            gc.collect()  # a failed load leaves big tensors behind until the next collection

    # ---- serving ---------------------------------------------------------------------

    @property
    def default(self):
        return self.loaders[0]

    @property
    def scheduler(self):
        """The default model's scheduler."""
        return self.default.scheduler

    @property
    def schedulers(self):
        return [loader.scheduler for loader in self.loaders]

    def scheduler_for(self, name):
        """The scheduler of model `name` (None or "" is the default); an unknown or unloaded one is refused."""
        if not name:
            return self.default.scheduler
        for loader in self.loaders:
            if loader.name == name:
                if loader.error:
                    raise ProtocolError(f"model {name!r} is not available: {loader.error}", "settings.model")
                return loader.scheduler
        served = ", ".join(loader.name for loader in self.loaders)
        raise ProtocolError(f"unknown model {name!r}; this server has: {served}", "settings.model")

    def set_on_error(self, callback):
        """What to do when the default model cannot be loaded (the CLI stops the process)."""
        for loader in self.loaders:
            loader.on_error = callback

    def stop(self):
        """Let every scheduler's loop end."""
        for scheduler in self.schedulers:
            scheduler.stop()

    def status(self):
        """The default model's status, plus every model's as `models`."""
        return {**self.default.status(), "models": [loader.status() for loader in self.loaders]}

    def load(self):
        """How busy the schedulers are, all together."""
        loads = [scheduler.load() for scheduler in self.schedulers]
        return {"running": sum(load["running"] for load in loads), "waiting": sum(load["waiting"] for load in loads)}

    def depth(self):
        """Requests waiting or running, all models together."""
        return sum(scheduler.depth() for scheduler in self.schedulers)
