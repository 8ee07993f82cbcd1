"""The one kind of failure a user is shown: a single line that says what to do."""

import argparse
import re

# Messages echo user text (a file or model name, a key, argparse's view of an argument): every
# character a terminal or str.splitlines() takes as a line break becomes a space, and the other
# control characters (a terminal's escape sequences among them) are shown escaped.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def one_line(text: str) -> str:
    """``text`` made one printable line: line breaks become spaces, other control characters escapes."""
    text = " ".join(text.strip().splitlines())
    return _CONTROL.sub(lambda m: " " if m.group() in _BREAKS else m.group().encode("unicode_escape").decode(), text)


class StudioError(Exception):
    """A user-facing error. Its message is one line, printed as ``error: <message>``."""

    def __init__(self, message: str):
        super().__init__(one_line(str(message)))

    @property
    def message(self) -> str:
        return str(self)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are StudioErrors, so they print as the same single `error:` line."""

    def error(self, message):
        raise StudioError(message)
