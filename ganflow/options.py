"""What the ganflow commands share: their options (one per RunConfig field, the plugin and
progress options), and the wrapper that turns a user's mistake into one line and an exit code."""

from __future__ import annotations

import functools
import os
import sys

import click

from ganflow.config import CHOICES, FIELDS, flag, kind_of
from ganflow.errors import GanflowError

CLICK_TYPES = {"int": click.INT, "float": click.FLOAT, "str": click.STRING}


def import_tensorflow_quietly():
    """Import TensorFlow without its C++ start-up lines on stderr.

    TF 2.21 writes them before absl logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot stop
    them. Set TF_CPP_MIN_LOG_LEVEL below 3 to see them. Python errors are not affected.
    """
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "3":
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def reports_errors(command=None, *, tensorflow: bool = True):
    """A user's mistake becomes one line on stderr and a non-zero exit code, never a traceback.
    ``tensorflow=False``: a command that does not need TensorFlow does not import it."""
    if command is None:
        return functools.partial(reports_errors, tensorflow=tensorflow)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        if tensorflow:
            import_tensorflow_quietly()
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as exc:  # before any work the command keeps
            from ganflow.signals import name_of

            click.echo(f"Stopped by {name_of(exc)}: nothing was made", err=True)
            sys.exit(130)
        except GanflowError as exc:
            if click.get_current_context().find_root().params.get("debug"):
                import traceback

                traceback.print_exc()
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def config_options(command):
    """One option per RunConfig field that has a flag (recipe, plugin_modules and
    disable_plugins have their own); a list field's option is singular and repeatable."""
    for name, field in reversed(FIELDS.items()):
        meta = field.metadata
        if not meta["flag"]:
            continue
        kind = kind_of(name)
        if kind == "bool":
            option = click.option(f"{flag(name)}/--no-{flag(name)[2:]}", default=None,
                                  help=meta["help"])
        elif name in CHOICES:
            option = click.option(flag(name), type=click.Choice(CHOICES[name]),
                                  help=meta["help"])
        elif kind == "tuple":
            option = click.option(flag(name), name, multiple=True, metavar=meta["metavar"],
                                  help=meta["help"])
        else:
            option = click.option(flag(name), type=CLICK_TYPES[kind], help=meta["help"],
                                  metavar=meta["metavar"])
        command = option(command)
    return command


def plugin_options(command):
    """--plugin-module and --disable-plugin, both repeatable: which plugins load."""
    for name, option in (("disable_plugins", "--disable-plugin"),
                         ("plugin_modules", "--plugin-module")):
        meta = FIELDS[name].metadata
        command = click.option(option, name, multiple=True, metavar=meta["metavar"],
                               help=meta["help"])(command)
    return command


def loaded(plugin_modules=(), disable_plugins=()):
    """The plugins, loaded as the options say."""
    from ganflow.plugins import load_plugins

    return load_plugins(tuple(plugin_modules), tuple(disable_plugins))


def progress_options(command):
    """-q/--quiet and -v/--verbose: how training reports its progress."""
    command = click.option("-v", "--verbose", is_flag=True,
                           help="the progress bar even when stdout is not a terminal")(command)
    return click.option("-q", "--quiet", is_flag=True,
                        help="no progress, no evaluation lines")(command)


def keras_verbosity(quiet: bool, verbose: bool) -> int:
    """Keras's ``verbose``: the live bar (1) on a terminal or with --verbose; one line per
    epoch (2) when stdout is a file or a pipe (CI, nohup), where the bar's carriage-return
    frames would fill it; nothing (0) with --quiet."""
    if quiet:
        return 0
    return 1 if verbose or sys.stdout.isatty() else 2
