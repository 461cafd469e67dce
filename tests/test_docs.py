"""The README and docs/ document every event, setting, flag and sampling field the code has."""
import dataclasses
import re
from pathlib import Path

import pytest

from webapp import config
from webapp.cli import build_parser
from webapp.web import protocol

ROOT = Path(__file__).resolve().parent.parent
README_PATH = ROOT / "README.md"
DOCS = ROOT / "docs"
README = README_PATH.read_text()
PROTOCOL = (DOCS / "protocol.md").read_text()
HOSTING = (DOCS / "hosting.md").read_text()

README_MAX_BYTES = 15_000

# A commit hash: 7 to 40 lowercase hex digits. Alone in backticks or in parentheses
# ("the code before (1a2b3c4)") it must hold a digit and a letter, so that numbers such
# as `1048576` and words such as "defaced" pass; right after the word "commit" ("commit
# 1a2b3c4", "commits: `0548614`") a digit is enough. A colour (#a1b2c3) is none of these.
HEX = r"(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}"
HASH = r"(?=[0-9a-f]*[a-f])" + HEX
COMMIT_HASHES = (
    re.compile(rf"`{HASH}`"),
    re.compile(rf"\({HASH}\)"),
    re.compile(rf"\b[Cc]ommit(?:s|ted)?\b[\s:#(`]*{HEX}\b"),
)


def section(text, title):
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


@pytest.mark.parametrize("event", protocol.CLIENT_EVENTS + protocol.SERVER_EVENTS)
def test_every_event_is_in_the_protocol_section(event):
    assert f"| `{event}` |" in PROTOCOL


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(protocol.SamplingSettings)])
def test_every_sampling_field_is_documented(field):
    assert f"| `{field}` |" in PROTOCOL


@pytest.mark.parametrize("reason", protocol.FINISH_REASONS)
def test_every_finish_reason_is_documented(reason):
    assert f"`{reason}`" in PROTOCOL


@pytest.mark.parametrize("code", [protocol.INVALID, protocol.BUSY, protocol.UNKNOWN_PARENT, protocol.INTERNAL,
                                  protocol.RATE_LIMITED, protocol.SIGNED_OUT])
def test_every_error_code_is_documented(code):
    assert f"`{code}`" in PROTOCOL


@pytest.mark.parametrize("setting", config.SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_in_the_table_with_its_help(setting):
    row = re.search(rf"^\| `{setting.name}` \|.*$", section(README, "Command line"), re.MULTILINE)
    assert row, f"{setting.name} missing from the README's settings table"
    assert setting.help in row.group(0)


@pytest.mark.parametrize("limit", config.LIMITS, ids=lambda s: s.name)
def test_every_limit_is_in_the_hosting_table_with_its_help(limit):
    row = re.search(rf"^\| `{limit.name}` \|.*$", section(HOSTING, "Limits"), re.MULTILINE)
    assert row, f"{limit.name} missing from docs/hosting.md's limits table"
    assert limit.help in row.group(0)


def test_every_flag_is_documented():
    flags = [flag for action in build_parser()._actions for flag in action.option_strings
             if flag.startswith("--") and flag != "--help"]
    assert "--model" in flags
    for flag in flags:
        assert f"| `{flag}` |" in section(README, "Command line"), flag


@pytest.mark.parametrize("name", ["screenshot.png", "dashboard.png"])
def test_readme_screenshots_exist(name):
    assert f"(docs/{name})" in README
    assert (DOCS / name).is_file()


def test_readme_is_short():
    size = len(README_PATH.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail to docs/ (at most {README_MAX_BYTES})"


@pytest.mark.parametrize("path", [README_PATH, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_no_commit_hashes_in_the_docs(path):
    text = path.read_text()
    found = [m.group(0) for pattern in COMMIT_HASHES for m in pattern.finditer(text)]
    assert not found, f"{path.name} cites commits (git keeps history): {found}"
