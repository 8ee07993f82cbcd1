"""The one kind of failure a user is shown: a single line that says what to do."""

import argparse


class StudioError(Exception):
    """A user-facing error. Its message is one line, printed as ``error: <message>``."""

    def __init__(self, message: str):
        super().__init__(message.strip().replace("\n", " "))

    @property
    def message(self) -> str:
        return str(self)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are StudioErrors, so they print as the same single `error:` line."""

    def error(self, message):
        raise StudioError(message)
