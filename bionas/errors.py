"""The one error type users can cause; the CLI turns it into a clean message."""

import click


class BionasError(click.ClickException):
    """A problem with the user's input or environment: message names the file/column/value."""
