"""Exit statuses and error lines of the command lines (``python -m nn_from_scratch <command>``).

Every command line keeps one contract:

* ``0``: done (and every check passed);
* ``1``: a check failed (a layer or model disagrees, a grade is not a pass, training stopped early);
* ``2``: the command could not run: a bad argument, a file it cannot read or write, a missing
  optional dependency.  It prints ONE line to stderr, ``<prog>: error: <what>``, and no traceback
  (set ``NN_FROM_SCRATCH_TRACEBACK=1`` to see the traceback of an unexpected error).

``ArgumentParser`` is argparse's with a one-line usage error; ``run(main, argv, prog)`` calls a
command's ``main`` and turns what escapes it into the status above.
"""
import argparse
import os
import sys
import tempfile
import traceback

__all__ = ["ArgumentParser", "UsageError", "run", "command", "check_options", "output_directory", "output_file", "USAGE_ERROR",
           "CHECK_FAILED", "TRACEBACK_ENV"]

#: the exit status of a command that could not run, and of a failed check
USAGE_ERROR, CHECK_FAILED = 2, 1
#: set to 1 to print the traceback of an unexpected error
TRACEBACK_ENV = "NN_FROM_SCRATCH_TRACEBACK"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line on stderr, then exit status 2."""

    def error(self, message):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see --help)\n")


class UsageError(Exception):
    """A bad argument found by a command's own checks; ``run`` prints its message alone (status 2)."""


def check_options(args, rules):
    """Raise ``UsageError`` for the first option of ``args`` breaking its rule.

    ``rules``: ``{dest: ("int>=", low) | ("float>", low) | ("float>=", low)}``; None values pass."""
    for dest, (kind, low) in rules.items():
        value = getattr(args, dest)
        if value is None:
            continue
        ok = value >= low if kind in ("int>=", "float>=") else value > low
        if not ok or value != value:                       # NaN too
            want = {"int>=": f">= {low}", "float>=": f">= {low}", "float>": f"> {low}"}[kind]
            raise UsageError(f"--{dest.replace('_', '-')} must be {want}, received {value}")


def output_directory(path, flag="--out"):
    """Check, before any work, that files can be written in the directory ``path`` (creating it
    when missing, as the run would, then removing what was created); else ``UsageError``."""
    full = os.path.abspath(path)
    probe = full
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError(f"{flag} {path!r}: {probe!r} is a file, not a directory")
    try:
        os.makedirs(full, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=full, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"{flag} {path!r}: cannot write there ({exc.strerror or exc})") from None
    finally:
        d = full
        while d != probe and os.path.isdir(d):          # leave no trace of the check
            try:
                os.rmdir(d)
            except OSError:
                break
            d = os.path.dirname(d)
    return path


def output_file(path, flag):
    """Check (before any work) that the file ``path`` can be written, or raise ``UsageError``."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a directory; give a file name")
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {path!r}: the directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path!r}: the directory {parent!r} is not writable")
    return path


def _one_line(exc):
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + " ..."


def _failure(exc, prog):
    """The exit status of an exception that escaped a command (printed as one line)."""
    if isinstance(exc, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    if isinstance(exc, UsageError):
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return USAGE_ERROR
    if not isinstance(exc, (OSError, MemoryError)) and os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        traceback.print_exc()                   # bad data found late, or a bug: the traceback on request
    print(f"{prog}: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
    return USAGE_ERROR


def command(prog):
    """Decorator of a command's ``main(argv)``: what escapes it (but ``SystemExit``, argparse's own
    exit) becomes status 2 with one line on stderr, so a direct call returns the status too."""
    def wrap(main):
        def wrapper(argv=None):
            try:
                return main(argv)
            except SystemExit:
                raise
            except (Exception, KeyboardInterrupt) as exc:    # noqa: BLE001 - the contract above
                return _failure(exc, prog)
        wrapper.__doc__, wrapper.__name__, wrapper.__wrapped__ = main.__doc__, main.__name__, main
        return wrapper
    return wrap


def run(main, argv=None, prog="python -m nn_from_scratch"):
    """``main(argv)``'s exit status; what escapes it becomes status 2 with one line on stderr."""
    try:
        code = main(argv)
    except SystemExit as exc:                   # argparse (--help: 0; a usage error: 2) or sys.exit
        code = exc.code
        if code is None:
            return 0
        if not isinstance(code, int):
            print(f"{prog}: error: {code}", file=sys.stderr)
            return USAGE_ERROR
        return code
    except (Exception, KeyboardInterrupt) as exc:    # noqa: BLE001 - the contract above
        return _failure(exc, prog)
    return 0 if code is None else int(code)
