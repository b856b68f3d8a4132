"""A mistake in what the user gave reaches the terminal as its message, not as a Python traceback.

Hydra prints the last frames of any error a job raises. For an error this package raised on purpose (a
``raise`` statement in ``ana_lightning`` whose message names the key, value or file), for a file the
system could not open, and for a mandatory key left unset, those frames only push the message the
user needs away from the prompt. :func:`user_errors` wraps a command's task function so that such an
error is re-raised as a :class:`UserError`, which Hydra prints as its message alone (the command still
exits with 1, a sweep still stops). ``HYDRA_FULL_ERROR=1`` leaves every error as it was, with its full
traceback; any other error (a bug) keeps its traceback too.
"""

from __future__ import annotations

import functools
import linecache
import os
import re
from collections.abc import Callable
from typing import Any

from hydra.errors import CompactHydraException
from omegaconf.errors import MissingMandatoryValue

PACKAGE = "ana_lightning"
#: ``raise SomeError(...)``: a new error with its message, not a re-raise of a caught one
_RAISE_NEW = re.compile(r"raise\s+[A-Za-z_][\w.]*\(")


class UserError(CompactHydraException):
    """What the user gave is wrong; the message (``<original type>: <its message>``) says what and where."""


def is_user_error(err: BaseException, package: str = PACKAGE) -> bool:
    """True for an error the user can mend from its message alone.

    That is: a ``raise`` statement in ``package`` raised it (a deliberate check with its message, as
    opposed to an error some line of ours ran into), or the system could not open a named file, or a
    mandatory config key was left unset.
    """
    if isinstance(err, MissingMandatoryValue):
        return True
    if isinstance(err, OSError) and err.filename is not None:
        return True
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    if module != package and not module.startswith(package + "."):
        return False
    line = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).strip()
    return _RAISE_NEW.match(line) is not None


def user_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a Hydra task function (below ``@hydra.main``) as the module docstring says."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except Exception as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1" or not is_user_error(err):
                raise
            if isinstance(err, MissingMandatoryValue):  # (Hydra would print an OmegaConf cause a second time)
                key = err.full_key or "a key marked ???"
                raise UserError(
                    f"{key} is not set: give it on the command line, e.g. {key}=<value>"
                ) from None
            raise UserError(f"{type(err).__name__}: {err}") from err

    return wrapper
