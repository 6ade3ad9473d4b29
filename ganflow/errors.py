"""Errors a user can act on. The CLI prints them on one line and exits with their code."""


class GanflowError(Exception):
    """Something the user can fix: what was wrong, what was expected, what to try."""

    exit_code = 1


class UsageError(GanflowError):
    """A bad name, number or combination of settings; caught before any work starts."""

    exit_code = 2


class Stopped(GanflowError):
    """Ctrl-C, SIGTERM or SIGHUP stopped a run before it had anything to keep but its
    settings (a run stopped later ends KILLED with its checkpoint, and says so itself)."""

    exit_code = 130


class TrackingServerError(GanflowError):
    """The tracking URI leads to a server that is not an MLflow tracking server, or does not
    speak the URI's protocol."""

    exit_code = 69  # EX_UNAVAILABLE


class PluginError(GanflowError):
    """A plugin failed to import, to validate, or registered a name another plugin has."""

    exit_code = 1


class TrainingDiverged(GanflowError):
    """Losses or weights stopped being finite; the run is FAILED, its last good checkpoint
    kept."""

    exit_code = 1


class GanflowDeprecationWarning(FutureWarning):
    """Something ganflow still accepts but will not always: shown by default (unlike a
    DeprecationWarning), as it is meant for plugin authors running the command line."""


def last_line(exc: BaseException) -> str:
    """An exception's last line of text: what went wrong, without the story before it."""
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else ""


def first_line(exc: BaseException) -> str:
    """An exception's first line of text (its type's name if it has none): what went wrong,
    without the details after it."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
