"""What every command shares: clean one-line errors (exit 2) and the lazy TensorFlow import."""

from __future__ import annotations

import functools
import os
import sys

import click

from edge_runtime.errors import WavenetEdgeError, first_line

EXIT_BAD_INPUT = 2


def clean_errors(fn):
    """Turns expected errors into ``error: message`` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.exceptions.ClickException:
            raise
        except (OSError, WavenetEdgeError) as e:  # every error of ours derives from WavenetEdgeError
            message = first_line(e)
            click.echo(f"error: {message}", err=True)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper


def require_tensorflow() -> None:
    """Imports TensorFlow, or exits 2 naming the extra to install.

    TensorFlow's C++ libraries print start-up banners to file descriptor 2 while they load, whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says; they are dropped so that errors stay one line. Later messages pass.
    """
    from edge_runtime.interpreter import quiet_native_stderr

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with quiet_native_stderr():
            import tensorflow  # noqa: F401
    except ImportError:
        missing = True
    else:
        missing = False
    if missing:
        click.echo("error: this command needs TensorFlow: pip install 'wavenet-edge[train]'", err=True)
        sys.exit(EXIT_BAD_INPUT)
