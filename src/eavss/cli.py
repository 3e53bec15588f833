"""The ``eavss`` command line, built from the recipe registry (:data:`eavss.recipes.RECIPES`).

Every sub-command's flags and ``--help`` come from its config class: each field declared with a
``flag`` in :func:`eavss.config.option` becomes that flag, its help is the field's help plus its
default. Every sub-command takes ``--config FILE.yaml`` and trailing dotted overrides
(``key=value``, e.g. ``prune.fraction=0.3 eval.limits.squad=50``); explicit flags win over
both. ``eavss config [COMMAND]`` prints a command's resolved configuration with every key.

Errors, interrupts and ``torchrun`` are handled here, once: a user error prints one line
(``eavss: error: ...``) and exits 2; Ctrl-C or SIGTERM exits 130 with nothing written; a recipe
that does not declare torchrun support refuses to run under torchrun.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from typing import Any

from eavss.errors import EavssError


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`EavssError` (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> typing.NoReturn:
        raise EavssError(f"{message}; see `{self.prog} --help`")


def _flag_type(typ: Any):
    from eavss.config import _strip_optional

    base, _ = _strip_optional(typ)
    if base in (int, float):
        return base
    return str  # strings, lists (comma-separated) and mapping broadcasts are parsed in _flag_values


def _default_text(cfg_cls: type, key: str) -> str:
    from eavss.config import _scalar, get_key

    try:
        return _scalar(get_key(cfg_cls(), key))
    except Exception:  # noqa: BLE001 -- a default that cannot be shown is left out of the help
        return ""


def add_config_flags(p: argparse.ArgumentParser, cfg_cls: type) -> None:
    """Add ``--config``, one flag per declared field, and the ``key=value`` overrides."""
    from eavss.config import iter_fields

    p.add_argument("--config", metavar="FILE", help="YAML config file (`eavss config COMMAND` prints every key)")
    for key, f, typ in iter_fields(cfg_cls):
        md = f.metadata
        flag = md.get("flag")
        if not flag:
            continue
        dest = "f:" + key
        help_text = md.get("help", "")
        if md.get("action"):
            p.add_argument(flag, dest=dest, action=md["action"], default=None,
                       help=f"turn off: {help_text}" if md["action"] == "store_false" else help_text)
            continue
        if md.get("broadcast"):
            p.add_argument(flag, dest=dest, type=int, default=None, metavar="N", help=help_text)
            continue
        default = "" if md.get("required") else _default_text(cfg_cls, key)
        p.add_argument(flag, dest=dest, type=_flag_type(typ), default=None, required=bool(md.get("required")),
                       metavar=key.split(".")[-1].upper(),
                       help=f"{help_text} (config key {key}" + (f"; default {default})" if default else ")"))
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. seed=1")


def _flag_values(args: argparse.Namespace, cfg_cls: type) -> tuple[dict[str, Any], dict[str, int]]:
    """``(values, broadcasts)`` from the parsed flags: values by dotted key (typed, literal), and
    the broadcast flags (``--limit N``) by dotted key of their mapping."""
    from eavss.config import _strip_optional, iter_fields

    values: dict[str, Any] = {}
    broadcasts: dict[str, int] = {}
    for key, f, typ in iter_fields(cfg_cls):
        v = getattr(args, "f:" + key, None)
        if v is None:
            continue
        md = f.metadata
        flag = md["flag"]
        if md.get("broadcast"):
            lo = md.get("min")
            if lo is not None and v < lo:
                raise EavssError(f"{flag} must be >= {lo}, got {v}")
            broadcasts[key] = v
            continue
        base, _ = _strip_optional(typ)
        if typing.get_origin(base) is list:
            v = list(dict.fromkeys(x.strip() for x in v.split(",") if x.strip()))
            if not v:
                raise EavssError(f"{flag} is empty; pass a comma-separated list, e.g. {flag} "
                                 f"{','.join(map(str, _default_list(cfg_cls, key)))}")
        values[key] = v
    return values, broadcasts


def _default_list(cfg_cls: type, key: str) -> list:
    from eavss.config import get_key

    return list(get_key(cfg_cls(), key))


def resolve(recipe, args: argparse.Namespace):
    """The resolved config of ``recipe`` from defaults, ``--config``, overrides and flags."""
    from eavss.config import get_key, iter_fields, load_config, set_key, validate

    cfg_cls = recipe.config_class()
    values, broadcasts = _flag_values(args, cfg_cls)
    cfg = load_config(cfg_cls, getattr(args, "config", None), list(getattr(args, "overrides", None) or []), values,
                      check=False)
    fields = {k: f for k, f, _ in iter_fields(cfg_cls)}
    if broadcasts:  # resolve what the sections derive first (e.g. --suite sets eval.tasks), then broadcast over it
        validate(cfg)
    for key, n in broadcasts.items():  # --limit N: every element of the named list gets N
        over = fields[key].metadata["broadcast"]
        set_key(cfg, key, {name: n for name in get_key(cfg, over)})
    cfg = validate(cfg)
    check = getattr(cfg_cls, "check_given", None)  # a recipe's check of settings it would ignore
    if check is not None:
        given = {k: fields[k].metadata.get("flag") or k for k in [*values, *broadcasts]}
        for key in (item.split("=", 1)[0].strip() for item in getattr(args, "overrides", None) or []):
            given.setdefault(key, key)
        check(cfg, given)
    return cfg


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered command."""
    from eavss.recipes import RECIPES

    ap = _Parser(prog="eavss",
                 description="Which decoder layers of a language model matter (AVSS), remove the ones that don't, and "
                             "find the layers where hallucination lives (EAVSS). Default model: SmolLM2-135M-Instruct "
                             "from PyPI.",
                 epilog="Each command has its own --help. Definitions: docs/method.md, docs/hallucination.md.")
    ap.add_argument("--version", action="version", version=f"eavss {_version()}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for r in RECIPES.entries():
        _command_parser(r.obj, sub.add_parser(r.name, help=r.obj.help, description=r.obj.description,
                                              epilog=r.obj.epilog or None))
    _config_parser(sub.add_parser("config", help="print a command's resolved configuration (every key, its default "
                                                 "and help)", description=_CONFIG_DESCRIPTION))
    return ap


_CONFIG_DESCRIPTION = ("Print the resolved configuration of COMMAND (default: run) as YAML that --config loads: "
                       "defaults < --config FILE < key=value overrides.")


def _config_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The parser of ``eavss config`` (a new top-level one when ``p`` is None)."""
    from eavss.recipes import RECIPES

    if p is None:
        p = _Parser(prog="eavss config", description=_CONFIG_DESCRIPTION, allow_abbrev=False)
    p.add_argument("--config", metavar="FILE", help="YAML config file to resolve")
    p.add_argument("rest", nargs="*", metavar="[COMMAND] key=value",
                   help=f"the command ({', '.join(RECIPES.names())}; default run), then overrides")
    return p


def _command_parser(recipe, p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The parser of one command (a new top-level one named ``eavss NAME`` when ``p`` is None)."""
    if p is None:
        p = _Parser(prog=f"eavss {recipe.name}", description=recipe.description, epilog=recipe.epilog or None,
                    allow_abbrev=False)
    add_config_flags(p, recipe.config_class())
    return p


def _version() -> str:
    import importlib.metadata as md

    try:
        return md.version("eavss")
    except md.PackageNotFoundError:
        return "unknown"


def _config_command(args: argparse.Namespace) -> int:
    from eavss.config import dump_config, load_config
    from eavss.recipes import RECIPES

    rest = list(args.rest or [])
    name = "run"
    if rest and "=" not in rest[0]:
        name = rest.pop(0)
        if name not in RECIPES:
            raise EavssError(f"{name!r} is not key=value (e.g. prune.fraction=0.3) nor a command "
                             f"({', '.join(RECIPES.names())})")
    recipe = RECIPES[name]
    cfg = load_config(recipe.config_class(), args.config, rest)
    sys.stdout.write(f"# eavss {name}: resolved configuration (eavss {name} --config FILE loads this)\n")
    sys.stdout.write(dump_config(cfg))
    return 0


def _run_command(name: str, args: argparse.Namespace) -> int:
    import torch

    from eavss import distributed as edist
    from eavss.recipes import RECIPES

    recipe = RECIPES[name]
    cfg = resolve(recipe, args)
    if getattr(args, "config", None):  # the config file is an input: --out must not hold it
        from eavss.io import check_not_inside

        check_not_inside(cfg.out, args.config)
    if edist.env_rank()[1] > 1:  # --- torchrun: one process per device
        if not recipe.torchrun:
            raise EavssError(f"`eavss {name}` does not run under torchrun; start it as one process")
        cfg.model.device = edist.device_for_rank(cfg.model.device)
        edist.init_from_env(cfg.model.device)
        cfg.progress = cfg.progress and edist.is_main()
    threads = torch.get_num_threads()
    try:
        report = recipe.runner()(cfg)
    finally:
        torch.set_num_threads(threads)
    if edist.is_main():  # --- torchrun: rank 0 alone prints
        for line in recipe.summarise(report, cfg):
            print(line)
    return 0


def out_of_memory_line(exc: BaseException) -> str:
    """One line for torch's out-of-memory error: what was asked and what was free (the first two
    sentences of torch's message), and the fix: smaller batches, or a GPU not shared with other jobs."""
    first = " ".join(str(exc).split(". ")[:2]).replace("\n", " ").strip()
    return (f"the device ran out of memory ({first}); lower the command's batch sizes (eval.batch_size, and "
            "heal.batch_size / train.batch_size / calibration.batch_size where the command has them; `eavss "
            "config COMMAND` lists them) or free the device; compare and mitigate resume their finished steps "
            "when the same command runs again")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``eavss`` console script. Returns the exit status.

    Ctrl-C (or SIGTERM) at any point in here, the lazy imports of torch included, prints one line
    and exits 130.
    """

    def _term(signum, frame):  # SIGTERM unwinds like Ctrl-C, so atomic outputs are cleaned up
        raise KeyboardInterrupt

    old: list = []  # the SIGTERM handler to restore, once ours is set
    try:
        import signal

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        old.append(signal.signal(signal.SIGTERM, _term))
        from eavss.recipes import RECIPES

        argv = list(sys.argv[1:] if argv is None else argv)
        if argv and argv[0] in RECIPES:  # flags and key=value overrides may come in any order
            args = _command_parser(RECIPES[argv[0]]).parse_intermixed_args(argv[1:])
            return _run_command(argv[0], args)
        if argv and argv[0] == "config" and not {"-h", "--help"} & set(argv[1:]):  # --config FILE and overrides in any order
            args = _config_parser().parse_intermixed_args(argv[1:])
            args.command = "config"
            return _config_command(args)
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2
        return _config_command(args)
    except EavssError as e:
        print(f"eavss: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eavss: interrupted; --out was not written", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- only the accelerator running out of memory is turned into one line
        if type(e).__name__ != "OutOfMemoryError":  # torch.OutOfMemoryError (torch.cuda's is the same class)
            raise
        print(f"eavss: error: {out_of_memory_line(e)}", file=sys.stderr)
        return 2
    finally:
        # Only modules already imported: an import that Ctrl-C cut short (torch's, say) must not be
        # started again here; it would fail with a traceback or crash. Neither module imported means
        # no lock taken and no process group to leave.
        io = sys.modules.get("eavss.io")
        if io is not None:
            io.unlock_out_dir()
        if old and old[0] is not None:  # None: a handler not set from Python, which cannot be restored
            signal.signal(signal.SIGTERM, old[0])
        edist = sys.modules.get("eavss.distributed")
        if edist is not None:  # --- torchrun: leave the process group
            edist.shutdown()


if __name__ == "__main__":
    sys.exit(main())
