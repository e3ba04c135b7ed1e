"""The one exception type for errors a user can cause."""


class SynthposError(Exception):
    """Bad input: a missing file, an invalid config value, a mismatched store.

    The message says what is wrong and how to fix it. The CLI prints it as one
    line and exits with code 2.
    """
