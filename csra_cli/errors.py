"""Errors that the CLI reports as one line (problem and fix) with a non-zero exit code."""


class CSRAError(Exception):
    """A user-facing error: the message names the problem and how to fix it."""

    exit_code = 2


class CheckpointError(CSRAError):
    pass


class ModelNotFound(CSRAError):
    pass


class DownloadError(CSRAError):
    pass
