"""The one exception type a user is meant to read.

Library code raises :class:`DenoiseError` with a single line that names the file (or URL)
and the problem; stage scripts and the CLI print it as ``error: ...`` and exit non-zero.
Anything else escaping is a bug and keeps its traceback.
"""


class DenoiseError(Exception):
    """A user-facing failure: bad input, missing data, failed verification."""


class BackendUnavailable(DenoiseError):
    """The backend itself stopped answering (a server gone, refusing or timing out): not one
    photo's problem, so a run of many stops rather than waiting the same way for each."""


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (its type name when it has no message):
    the detail a one-line error carries from a library that raised something longer."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
