"""User-facing errors: each says what is wrong, where, and how to fix it.

The CLI turns any ``ModelpressError`` into one plain line and exit status 2;
anything else is a bug in modelpress and keeps its traceback.
"""


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``, or the type alone for an empty message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class ModelpressError(Exception):
    """Bad input from the user (recipe, checkpoint, data, output folder)."""

    exit_code = 2


class RecipeError(ModelpressError):
    """The recipe does not validate; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class InputError(ModelpressError):
    """A checkpoint, factory or data source cannot be used."""


class SelectionError(ModelpressError):
    """A layer pattern in a pass matches no layer of the model."""


class OutputError(ModelpressError):
    """The output folder cannot be used: not writable, full, or holding another recipe's run."""
