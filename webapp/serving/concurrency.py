"""Run model work in one real OS thread, whatever Flask-SocketIO's async mode is.

Under eventlet a PyTorch call on the hub would freeze every connection, so model
calls go to a dedicated OS thread and the calling green thread waits for them
through `eventlet.tpool`, without blocking the hub. It is always the same thread:
PyTorch's OpenMP keeps one team of worker threads per calling thread, and several
teams spinning on two cores made each decoding step ~50% slower (measured).
"""
import queue
import threading


class ModelThread:
    """One OS thread that runs the jobs given to `call`, in order."""

    def __init__(self, green):
        """`green`: the process is monkey-patched by eventlet, so use the original primitives."""
        self.green = green
        if green:
            from eventlet import patcher

            self._threading = patcher.original("threading")
            self._jobs = patcher.original("queue").Queue()
        else:
            self._threading = threading
            self._jobs = queue.Queue()
        self._threading.Thread(target=self._work, name="tabwrite-model", daemon=True).start()

    def call(self, function, *args):
        """Run `function(*args)` on the model thread and return its result (or raise its error)."""
        job = {"function": function, "args": args, "finished": self._threading.Event()}
        self._jobs.put(job)
        if self.green:
            from eventlet import tpool

            tpool.execute(job["finished"].wait)  # a pool thread waits; the hub keeps serving
        else:
            job["finished"].wait()
        if "error" in job:
            raise job["error"]
        return job["result"]

    def _work(self):
        while True:
            job = self._jobs.get()
            try:
                job["result"] = job["function"](*job["args"])
            except BaseException as error:  # handed back to the caller, who decides
                job["error"] = error
            finally:
                job["finished"].set()


class Runner:
    """Spawns background tasks and runs blocking model calls the right way for the async mode."""

    def __init__(self, socketio):
        """Use the async mode `socketio` was set up with."""
        self.socketio = socketio
        self.model_thread = ModelThread(green=socketio.async_mode == "eventlet")

    def spawn(self, function, *args):
        """Start `function` as a background task (a green thread under eventlet)."""
        return self.socketio.start_background_task(function, *args)

    def run_blocking(self, function, *args):
        """Run `function` on the model thread and wait for it without blocking other clients."""
        return self.model_thread.call(function, *args)

    def event(self):
        """A wake-up event of the right kind for the async mode."""
        return self.socketio.server.eio.create_event()
