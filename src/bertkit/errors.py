"""The one exception type bertkit raises for problems a user can fix.

Its message is a single line naming the file (and line) and the problem; the CLI prints it
without a traceback.
"""


class BertkitError(Exception):
    """A problem with the user's input, files or arguments, explained in one line."""


class CheckpointError(BertkitError, ValueError):
    """A checkpoint directory or weight file that cannot be loaded."""


class InputError(BertkitError, ValueError):
    """Text or arguments that bertkit cannot process."""
