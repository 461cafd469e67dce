"""`tabwrite` / `python -m webapp`: parse flags, then serve the editor with eventlet."""
import argparse
import logging
import os
import sys
import warnings

from . import config as settings  # plain Python: safe to import before eventlet patches

# How often Python hands the GIL between threads (default 5 ms). The hub thread gives the
# GIL up at every socket call and waited up to this long to get it back each time while
# the model thread ran Python code, so pages loaded slowly while a model loaded.
SWITCH_INTERVAL = 0.0005


def build_parser():
    """Flags override TABWRITE_* environment variables, which override the defaults."""
    env = {**settings.DEFAULTS, **settings.from_env()}
    parser = argparse.ArgumentParser(prog="tabwrite", description="Write with a language model: press TAB.")
    parser.add_argument("--model", action="append",
                        help="auto (gpt2-large, or the embedded model offline), embedded, a Hub id, or a directory; "
                             f"repeat it to serve several, the first being the default (default: {env['MODEL']})")
    parser.add_argument("--device", default=env["DEVICE"], help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default=env["DTYPE"], help="auto, float32, bfloat16, float16, int8 or int4 (CPU)")
    parser.add_argument("--host", default=env["HOST"], help="address to listen on (0.0.0.0 for a whole network)")
    parser.add_argument("--port", type=int, default=env["PORT"], help="port to listen on")
    parser.add_argument("--max-context", type=int, default=env["MAX_CONTEXT"], help="most tokens the model reads")
    parser.add_argument("--access-code", default=env["ACCESS_CODE"],
                        help="class code students enter once to join (default: none, the page is open)")
    parser.add_argument("--admin-token", default=env["ADMIN_TOKEN"],
                        help="token for the teacher's dashboard at /admin (default: a random one, printed)")
    parser.add_argument("--allowed-origin", action="append",
                        default=[origin for origin in env["ALLOWED_ORIGINS"].split(",") if origin],
                        help="another origin allowed to connect, e.g. https://proxy.school (repeatable)")
    parser.add_argument("--allowed-host", action="append",
                        default=[host for host in env["ALLOWED_HOSTS"].split(",") if host],
                        help="a host name the server answers to (repeatable; default: localhost names when --host "
                             "is a loopback address, else any)")
    parser.add_argument("--trusted-proxies", type=int, default=env["TRUSTED_PROXIES"],
                        help="reverse proxies in front whose X-Forwarded-* headers to believe (default: 0)")
    parser.add_argument("--database", default=env["DATABASE"],
                        help="SQLite file for sessions, published documents and class settings")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def main(argv=None):
    """Start the server; exit with a clear message when the model cannot be had."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eventlet's notice that it is in maintenance mode
        import eventlet

    eventlet.monkey_patch()  # before Flask, torch or anything else opens sockets or threads
    sys.setswitchinterval(SWITCH_INTERVAL)
    args = build_parser().parse_args(argv)
    models = model_setting(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from . import create_app
    from .hosting.access import ConfigError
    from .models.loading import ModelError

    config = {"MODEL": models, "DEVICE": args.device, "DTYPE": args.dtype, "HOST": args.host,
              "PORT": args.port, "MAX_CONTEXT": args.max_context, "ASYNC_MODE": "eventlet",
              "ACCESS_CODE": args.access_code, "ADMIN_TOKEN": args.admin_token,
              "ALLOWED_ORIGINS": ",".join(args.allowed_origin), "DATABASE": args.database,
              "ALLOWED_HOSTS": ",".join(args.allowed_host or default_hosts(args.host)),
              "TRUSTED_PROXIES": args.trusted_proxies}
    try:
        app = create_app(config)
    except (ModelError, ConfigError) as error:
        print(f"tabwrite: cannot start: {error}", file=sys.stderr)
        return 2
    app.extensions["tabwrite"].set_on_error(_stop_process)
    print_banner(app.config, models.replace(",", ", "))
    app.extensions["socketio"].run(app, host=args.host, port=args.port, log_output=args.log_level.upper() == "DEBUG")
    return 0


def default_hosts(host):
    """The host names a server on `host` answers to when none are given: localhost names on a loopback address."""
    from .hosting.access import LOOPBACK_HOSTS

    return sorted(LOOPBACK_HOSTS) if host in LOOPBACK_HOSTS else []


def model_setting(args):
    """The MODEL setting from the flags: every --model given, comma-separated, else TABWRITE_MODEL or the default."""
    if args.model:
        return ",".join(args.model)
    return {**settings.DEFAULTS, **settings.from_env()}["MODEL"]


def print_banner(config, model):
    """What the teacher shares: the address (and its QR code), the class code, the dashboard's token."""
    from .hosting.sharing import ANY_ADDRESS, print_qr, share_url

    url = share_url(config["HOST"], config["PORT"])
    lines = [f"TabWrite is serving {model} at {url}"]
    if config["HOST"] in ANY_ADDRESS:
        lines.append("Students on this network open that address" +
                     (f" and enter the class code: {config['ACCESS_CODE']}" if config["ACCESS_CODE"] else
                      " (no class code: anyone on the network can write; add --access-code CODE)"))
    else:
        lines.append("Only this machine can reach it; for a class start with --host 0.0.0.0 --access-code CODE")
    lines.append(f"Teacher's dashboard: {url}admin  token: {config['ADMIN_TOKEN']}")
    print("\n".join(lines), flush=True)
    if config["HOST"] in ANY_ADDRESS:
        print_qr(url, sys.stdout)
    sys.stdout.flush()


def _stop_process(message):
    print(f"tabwrite: cannot start: {message}", file=sys.stderr, flush=True)
    os._exit(2)  # the eventlet server does not stop from a background task otherwise
