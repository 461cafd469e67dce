"""The command line: flags over TABWRITE_* variables over defaults, and the installed script."""
import shutil
import subprocess
import sys
from pathlib import Path

from webapp import config
from webapp.cli import build_parser, model_setting, print_banner
from webapp.hosting.sharing import share_url


def test_defaults(monkeypatch):
    for setting in config.SETTINGS + config.LIMITS:
        monkeypatch.delenv(f"TABWRITE_{setting.name}", raising=False)
    args = build_parser().parse_args([])
    assert (model_setting(args), args.host, args.port, args.device, args.dtype) == (
        "auto", "127.0.0.1", 5000, "auto", "auto")


def test_environment_overrides_defaults_and_flags_override_both(monkeypatch):
    monkeypatch.setenv("TABWRITE_PORT", "6123")
    monkeypatch.setenv("TABWRITE_MODEL", "gpt2")
    args = build_parser().parse_args([])
    assert args.port == 6123 and model_setting(args) == "gpt2"
    args = build_parser().parse_args(["--port", "7000", "--model", "embedded"])
    assert args.port == 7000 and model_setting(args) == "embedded"
    args = build_parser().parse_args(["--model", "embedded", "--model", "/models/tiny"])
    assert model_setting(args) == "embedded,/models/tiny", "several models, the first the default"


def test_environment_values_are_typed_like_their_defaults():
    found = config.from_env({"TABWRITE_MAX_QUEUE": "5", "TABWRITE_HOST": "0.0.0.0", "OTHER": "x"})
    assert found == {"MAX_QUEUE": 5, "HOST": "0.0.0.0"}


def test_the_installed_script_and_the_module_agree():
    script = shutil.which("tabwrite", path=str(Path(sys.executable).parent))
    assert script, "pip install -e . puts `tabwrite` beside the Python that runs the tests"
    by_script = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    by_module = subprocess.run([sys.executable, "-m", "webapp", "--help"], capture_output=True, text=True, timeout=60)
    assert by_script.returncode == by_module.returncode == 0
    assert "--model" in by_script.stdout
    assert by_script.stdout.split("\n", 1)[1] == by_module.stdout.split("\n", 1)[1]


def test_the_banner_for_a_class_shows_address_qr_code_and_tokens(capsys):
    print_banner({"HOST": "0.0.0.0", "PORT": 5000, "ACCESS_CODE": "maple-19", "ADMIN_TOKEN": "t0k"}, "gpt2")
    out = capsys.readouterr().out
    url = share_url("0.0.0.0", 5000)
    assert f"serving gpt2 at {url}" in out and "0.0.0.0" not in url
    assert "enter the class code: maple-19" in out and f"{url}admin  token: t0k" in out
    assert "█" in out and "▀" in out, "a QR code drawn in the terminal"


def test_the_banner_for_localhost_says_how_to_open_it_to_a_class(capsys):
    print_banner({"HOST": "127.0.0.1", "PORT": 5000, "ACCESS_CODE": "", "ADMIN_TOKEN": "t0k"}, "gpt2")
    out = capsys.readouterr().out
    assert "http://127.0.0.1:5000/" in out and "--host 0.0.0.0 --access-code" in out and "█" not in out
