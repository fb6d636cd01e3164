"""One exception type for bad input: the CLI prints its message as one line and exits 2."""


class QevalInputError(Exception):
    """Bad input from the user: a message that names the problem and the fix."""
