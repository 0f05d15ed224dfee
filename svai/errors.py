"""The one exception type that means "the user gave something wrong".

The CLI turns it into a single line on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""


class SvaiError(Exception):
    """A problem with the user's input: the message names the file or option and the fix."""
