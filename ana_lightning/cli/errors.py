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


#: Keys users reach for that a command names otherwise: the hint offers the command's own key.
KEY_ALIASES = {
    "model": "ckpt_path",
    "ckpt": "ckpt_path",
    "checkpoint": "ckpt_path",
    "weights": "ckpt_path",
    "images": "input",
    "folder": "input",
    "path": "input",
}


def unknown_key_hints(config_name: str, args: list[str]) -> list[str]:
    """For the ``key=value`` overrides in ``args`` whose key the command's config lacks (composed with the
    same group choices, e.g. ``experiment=``), a line each naming the key and the nearest ones it has."""
    import difflib

    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig

    try:
        parsed = OverridesParser.create().parse_overrides(
            [a for a in args if "=" in a and not a.startswith("-")]
        )
    except Exception:  # noqa: BLE001 - a line Hydra cannot parse got Hydra's own message
        return []
    plain = [o for o in parsed if not (o.is_add() or o.is_force_add() or o.is_delete())]
    groups = _default_groups(config_name)  # the groups this command composes (data, model, … for ana-train)
    chosen = [
        o.input_line for o in plain if o.key_or_group.split("@")[0] in groups and not o.is_sweep_override()
    ]
    GlobalHydra.instance().clear()
    cfg = None
    try:
        with initialize_config_module(config_module="ana_lightning.conf", version_base="1.3"):
            kept: list[str] = []
            for choice in [None, *chosen]:  # a choice that fails (a wrong option) got Hydra's own message
                try:
                    cfg = compose(config_name=config_name, overrides=kept + ([choice] if choice else []))
                except Exception:  # noqa: BLE001
                    continue
                kept += [choice] if choice else []
    except Exception:  # noqa: BLE001 - no hint is better than a second error
        return []
    finally:
        GlobalHydra.instance().clear()
    if cfg is None:
        return []
    hints = []
    for o in plain:
        key = o.key_or_group
        if key.split("@")[0] in groups or key.split(".")[0] == "hydra":
            continue
        node: Any = cfg
        parts = key.split(".")
        for i, part in enumerate(parts):
            if isinstance(node, DictConfig) and part in node.keys():  # (a mandatory ??? value counts)
                node = node._get_node(part)  # the node, not its value: nothing resolved
                continue
            if not isinstance(node, DictConfig):
                break  # a key below a value: Hydra's message says what it is
            prefix = "".join(f"{p}." for p in parts[:i])
            have = [str(k) for k in node.keys()]
            near = [prefix + KEY_ALIASES[part]] if KEY_ALIASES.get(part) in have else []
            # the same key deeper down (optimizer.lr → model.optimizer.lr), then names spelt alike
            rest = ".".join(parts[i:])
            near += [p for p in _paths(cfg) if p.endswith("." + rest) and p not in near][:2]
            near += [prefix + k for k in difflib.get_close_matches(part, have, n=3, cutoff=0.6)]
            near = list(dict.fromkeys(near))[:3]
            hints.append(
                f"ana-{config_name} has no key {prefix}{part}"
                + (f": did you mean {' or '.join(near)}?" if near else "")
                + f" (a key of your own: +{key}=…; every key: ana-{config_name} --cfg job)"
            )
            break
    return hints


def _paths(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key path of a config node, without resolving any value."""
    from omegaconf import DictConfig

    out = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            path = f"{prefix}{k}"
            out.append(path)
            out += _paths(node._get_node(k), path + ".")
    return out


def _default_groups(config_name: str) -> set[str]:
    """The config groups a command's primary config lists in its defaults (``data``, ``experiment``, …)."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    out = set()
    for item in OmegaConf.load(str(files("ana_lightning.conf").joinpath(f"{config_name}.yaml"))).get(
        "defaults", []
    ):
        if not isinstance(item, str):
            for key in item:
                out.add(str(key).split()[-1].split("@")[0])  # "optional local", "override hydra/launcher"
    return out


def override_hints(config_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command's ``@hydra.main`` function: when the command ends with an error, print after
    Hydra's message a line for each override whose key the config lacks, with the keys it likely meant
    (``ana-predict model=…``: ``did you mean ckpt_path?``)."""

    def decorate(main: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(main)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return main(*args, **kwargs)
            except SystemExit as stop:
                if stop.code not in (0, None):
                    import sys

                    for line in unknown_key_hints(config_name, sys.argv[1:]):
                        sys.stderr.write(f"hint: {line}\n")
                raise

        return wrapper

    return decorate
