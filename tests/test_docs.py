"""The README documents every event, setting, flag and sampling field the code has."""
import dataclasses
import re
from pathlib import Path

import pytest

from webapp import config, protocol
from webapp.cli import build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def section(title):
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


@pytest.mark.parametrize("event", protocol.CLIENT_EVENTS + protocol.SERVER_EVENTS)
def test_every_event_is_in_the_protocol_section(event):
    assert f"| `{event}` |" in section("Socket.IO protocol")


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(protocol.SamplingSettings)])
def test_every_sampling_field_is_documented(field):
    assert f"| `{field}` |" in section("Socket.IO protocol")


@pytest.mark.parametrize("reason", protocol.FINISH_REASONS)
def test_every_finish_reason_is_documented(reason):
    assert f"`{reason}`" in section("Socket.IO protocol")


@pytest.mark.parametrize("code", [protocol.INVALID, protocol.BUSY, protocol.UNKNOWN_PARENT, protocol.INTERNAL,
                                  protocol.RATE_LIMITED, protocol.SIGNED_OUT])
def test_every_error_code_is_documented(code):
    assert f"`{code}`" in section("Socket.IO protocol")


@pytest.mark.parametrize("setting", config.SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_in_the_table_with_its_help(setting):
    row = re.search(rf"^\| `{setting.name}` \|.*$", section("Command line"), re.MULTILINE)
    assert row, f"{setting.name} missing from the README's settings table"
    assert setting.help in row.group(0)


@pytest.mark.parametrize("limit", config.LIMITS, ids=lambda s: s.name)
def test_every_limit_is_in_the_hosting_table_with_its_help(limit):
    row = re.search(rf"^\| `{limit.name}` \|.*$", section("Hosting a class"), re.MULTILINE)
    assert row, f"{limit.name} missing from the README's limits table"
    assert limit.help in row.group(0)


def test_every_flag_is_documented():
    flags = [flag for action in build_parser()._actions for flag in action.option_strings
             if flag.startswith("--") and flag != "--help"]
    assert "--model" in flags
    for flag in flags:
        assert f"| `{flag}` |" in section("Command line"), flag


@pytest.mark.parametrize("name", ["screenshot.png", "dashboard.png"])
def test_readme_screenshots_exist(name):
    assert f"(docs/{name})" in README
    assert (Path(__file__).resolve().parent.parent / "docs" / name).is_file()
