"""Teaching material from the lesson: sampling presets and ready prompts, kept in lesson.json."""
import functools
import json
from pathlib import Path

from .protocol import parse_settings

LESSON_FILE = Path(__file__).with_name("lesson.json")


@functools.cache
def load_lesson(path=LESSON_FILE):
    """The presets and examples, each with settings checked against the protocol (a bad file fails loudly)."""
    lesson = json.loads(Path(path).read_text(encoding="utf-8"))
    for item in [*lesson["presets"].values(), *lesson["examples"]]:
        if not {"note", "settings"} <= set(item) or not ({"label"} <= set(item) or {"title", "text"} <= set(item)):
            raise ValueError(f"{path}: every preset needs label, settings and note; every example title and text too")
        parse_settings(item["settings"])  # raises ProtocolError naming a bad setting
    return lesson
