"""The argument parser of ``hope fit`` / ``hope finetune``: a key is read as typed, or the command stops and says why.

argparse, under jsonargparse and LightningCLI, accepts any unambiguous prefix of a key: ``--trainer.max_step 20``
silently set ``trainer.max_steps``, and a prefix that later becomes ambiguous, or that matches another key than the
one meant, is a setting nobody typed. ``HopeArgumentParser`` refuses prefixes and says which key was probably meant.

- ``join_negative_values``: a negative number after a space (``--model.optim.lr -1e-3``) looks like an option to
  argparse; it becomes ``--model.optim.lr=-1e-3`` first.
- ``config_file_error``: names the ``--config`` file with a YAML error (jsonargparse names none).
- ``union_error``: the one message that matters out of jsonargparse's dump of every member of an ``X | None`` type
  that did not accept a value (e.g. ``model.optim.lr=-0.001 must be > 0.``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningArgumentParser

__all__ = ["HopeArgumentParser", "config_file_error", "join_negative_values", "union_error"]

_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|-inf|-nan", re.IGNORECASE)


def join_negative_values(args: Sequence[str]) -> list[str]:
    """``--key -1e-3`` -> ``--key=-1e-3`` (argparse takes ``-1e-3`` after a space for an option, not a value)."""
    out: list[str] = []
    for arg in args:
        if out and _NUMBER.fullmatch(arg) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def config_file_error(args: Sequence[str]) -> str | None:
    """``--config FILE: not valid YAML ...`` for the first ``--config`` file that does not parse, else None
    (jsonargparse's own message says where in "<unicode string>" the error is, not in which file)."""
    for flag, value in zip(args, [*args[1:], None], strict=True):
        path = flag.removeprefix("--config=") if flag.startswith("--config=") else value if flag == "--config" else None
        if path is None or not Path(path).is_file():
            continue
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or " ".join(str(err).split())
            return f"--config {path}: not valid YAML: {problem}{where}."
    return None


def union_error(err: ValueError) -> ValueError | None:
    """The messages inside jsonargparse's "Does not validate against any of the Union subtypes" dump that are not
    the ``None`` member's (``Expected a <class 'NoneType'>``), as one ValueError; None for any other error."""
    text = str(err)
    if "Does not validate against any of the Union subtypes" not in text:
        return None
    errors = [m.group(1) for m in re.finditer(r"^\s*- (.+)$", text, re.MULTILINE)]
    relevant = [e for e in errors if "NoneType" not in e and "Does not validate" not in e]
    return ValueError("\n".join(relevant)) if relevant else None


def _option_strings(parser) -> set[str]:
    """Every ``--key`` of ``parser`` and of its subcommands' parsers."""
    options = {o for o in parser._option_string_actions if o.startswith("--")}
    subcommands = getattr(parser, "_subcommands_action", None)
    for sub in subcommands._name_parser_map.values() if subcommands is not None else []:
        options |= _option_strings(sub)
    return options


def suggest(token: str, options: set[str]) -> list[str]:
    """Keys a mistyped ``--key`` probably meant: those it is a prefix of, else the closest spellings."""
    key = token.split("=", 1)[0]
    longer = sorted(o for o in options if o.startswith(key) and o != key)
    return longer[:3] or difflib.get_close_matches(key, sorted(options), n=3, cutoff=0.75)


class HopeArgumentParser(LightningArgumentParser):
    """LightningArgumentParser without prefix matching, whose "unrecognized arguments" error suggests the key."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        """jsonargparse's error, with "did you mean --KEY" for each unrecognized key."""
        if message.startswith("unrecognized arguments:"):
            options = _option_strings(self)
            hints = []
            for token in message.removeprefix("unrecognized arguments:").split():
                if token.startswith("--") and (found := suggest(token, options)):
                    hints.append(f"{token.split('=', 1)[0]}: did you mean {' or '.join(found)}?")
            if hints:
                message += "\n" + "\n".join(hints) + "\n(keys are matched exactly: write the whole key)"
        return super().error(message, ex)
