"""The one kind of failure a user is shown: a single line that says what to do."""


class StudioError(Exception):
    """A user-facing error. Its message is one line, printed as ``error: <message>``."""

    def __init__(self, message: str):
        super().__init__(message.strip().replace("\n", " "))

    @property
    def message(self) -> str:
        return str(self)
