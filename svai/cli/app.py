"""The typer application and the error handling every command shares."""

from __future__ import annotations

import codecs
import functools
import logging
import sys
from typing import Any, Callable, TypeVar

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from svai.errors import SvaiError

app = typer.Typer(
    name="svai",
    help=(
        "Simulate the outcome of facial plastic surgery.\n\n"
        "Typical run: svai prepare synthetic data/ && svai train --model pix2pix --data data/ "
        "--out runs/p2p && svai generate --run runs/p2p --input data/test/before --output out/p2p "
        "&& svai evaluate --pred out/p2p --target data/test/after --json runs/p2p/evaluation.json "
        "&& svai compare runs/p2p"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

def _value_name(option: Any, ctx: Any) -> str | None:
    """What `--help` shows after an option: nothing for a flag, the metavar a command gave,
    else a word for the kind of value (N, NUMBER, PATH, TEXT) — never a Python type name."""
    if getattr(option, "is_flag", False) or getattr(option, "count", False):
        return None
    if option.metavar is not None:
        return option.metavar
    label = str(option.display_type(ctx) or "").strip("<>")
    label = label.removeprefix("list[").removesuffix("]")
    if "|" in label:
        return label  # choices read as they are typed
    names = {"int": "N", "float": "NUMBER", "bool": "true|false", "str": "TEXT"}
    return names.get(label, "PATH" if "path" in label.lower() or "file" in label.lower() or "dir" in label.lower() else "TEXT")


# typer's own rendering prints `<bool>` for flags and `<list[str]>` for repeated options.
if hasattr(typer.core, "TyperOption") and hasattr(typer.core.TyperOption, "display_type_rich"):
    typer.core.TyperOption.display_type_rich = _value_name  # type: ignore[method-assign]
    # An argument's name (SOURCE, OUT) already says what it takes.
    typer.core.TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]

console = Console()
err_console = Console(stderr=True, soft_wrap=True, highlight=False)

# What the symbols svai prints become on a terminal that cannot show them (an ASCII locale).
_ASCII = {"→": "->", "←": "<-", "±": "+/-", "↑": "^", "↓": "v", "†": "+", "×": "x", "—": "-", "–": "-",
          "…": "...", "·": ".", "≥": ">=", "≤": "<=", "✓": "ok"}


def _ascii_fallback(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start:error.end]
    return "".join(_ASCII.get(char, "?") for char in text), error.end


codecs.register_error("svai-ascii", _ascii_fallback)


def terminal_safe_streams() -> None:
    """Let stdout and stderr print every symbol svai uses, spelled in ASCII where the
    terminal's encoding has no such character, instead of failing on the first arrow."""
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None) or "utf-8"
        try:
            "".join(_ASCII).encode(encoding)
        except (UnicodeEncodeError, LookupError):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(errors="svai-ascii")

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> typer.Exit:
    """Print one error line on stderr and return the exit (code 2) to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    return typer.Exit(code=2)


def user_errors(function: F) -> F:
    """Turn `SvaiError` into one line on stderr and exit code 2, never a traceback.

    OS errors that describe the machine rather than a bug (no permission, a full disk, a name
    too long, a file in the way) get the same treatment, naming the path; any other error
    keeps its traceback.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except SvaiError as error:
            raise fail(str(error)) from None
        except (OSError, UnicodeDecodeError, MemoryError) as error:
            raise _library_error(error) from None
        except Exception as error:
            # safetensors' SafetensorError and zipfile's BadZipFile share no base class worth
            # importing here; anything else keeps its traceback.
            if _out_of_memory(error):
                raise _library_error(MemoryError()) from None
            if type(error).__name__ not in ("SafetensorError", "BadZipFile"):
                raise
            raise _library_error(error) from None

    return wrapper  # type: ignore[return-value]


def _out_of_memory(error: BaseException) -> bool:
    """torch reports a failed allocation as a RuntimeError naming the allocator."""
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def _library_error(error: BaseException) -> BaseException:
    """The one-line exit for what the libraries raise about the machine or a file, else the error."""
    if isinstance(error, MemoryError):
        return fail("not enough memory for this command: use smaller images, a smaller --batch-size or fewer workers")
    from svai.io import describe_library_error  # numpy and PIL stay out of `svai --help`

    message = describe_library_error(error)
    return error if message is None else fail(message)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _version(value: bool) -> None:
    if value:
        from svai import __version__

        console.print(f"svai {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details on stderr."),
) -> None:
    """Simulate the outcome of facial plastic surgery."""
    terminal_safe_streams()
    setup_logging(verbose)
