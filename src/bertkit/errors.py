"""The one exception type bertkit raises for problems a user can fix.

Its message is a single line naming the file (and line) and the problem; the CLI prints it
without a traceback.
"""

import sys
from collections.abc import Callable


class BertkitError(Exception):
    """A problem with the user's input, files or arguments, explained in one line."""


class CheckpointError(BertkitError, ValueError):
    """A checkpoint directory or weight file that cannot be loaded."""


class InputError(BertkitError, ValueError):
    """Text or arguments that bertkit cannot process."""


def run_script(main: Callable[[], object], prog: str) -> None:
    """Run a script's `main`: a BertkitError (a missing file, a bad line) ends with one line on
    stderr and exit status 2, never a traceback."""
    try:
        main()
    except BertkitError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
