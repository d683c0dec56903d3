"""Options declared once (sparsify's habit): a dataclass field's name, type, default and docstring are
the command-line option, its help text, its default and its row in docs/commands.md; its metadata
holds its check and whether it is part of a run's identity.

A field's docstring is the string literal written on the line after it, as attribute docstrings are
written for Sphinx; :func:`docstrings` reads them from the class's source.
"""

import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import cache
from pathlib import Path

from clipsae.errors import ClipsaeError


def option(default=dataclasses.MISSING, *, at_least=None, above=None, below=None, choices=None, identity=False,
           shown_default: str | None = None, cli: bool = True, metavar: str | None = None, flag_name: str | None = None):
    """A dataclass field that is also a command-line option.

    ``at_least``/``above``/``below`` and ``choices`` are its check (see :func:`check`); ``identity``:
    it decides a run's result; ``shown_default``: how help and docs write a default that is computed
    later (None fields); ``cli`` False keeps it off the command line (a setting for programs and tests);
    ``flag_name`` replaces the option's name made from the field's (``--wandb`` for ``wandb_project``).
    """
    meta = {"at_least": at_least, "above": above, "below": below, "choices": choices, "identity": identity,
            "shown_default": shown_default, "cli": cli, "metavar": metavar, "flag": flag_name}
    return dataclasses.field(default=default, metadata=meta)


def flag(f: dataclasses.Field) -> str:
    """A field's option name: ``batch_size`` → ``--batch-size``, unless it names its own."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


@cache
def docstrings(cls) -> dict[str, str]:
    """Each field's docstring, read from the source of ``cls`` and the dataclasses it derives from."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                out[stmt.target.id] = " ".join(nxt.value.value.split())
    return out


def cli_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def check(obj) -> None:
    """Refuse, in one line naming the option, a value outside its field's declared range or choices."""
    for f in dataclasses.fields(obj):
        v, m = getattr(obj, f.name), f.metadata
        if v is None or not m:
            continue
        name = flag(f)
        if m.get("choices") is not None and v not in m["choices"]:
            raise ClipsaeError(f"{name} must be one of {', '.join(map(str, m['choices']))}, not {v!r}")
        lo, above, below = m.get("at_least"), m.get("above"), m.get("below")
        if lo is not None and below is not None and not lo <= v < below:
            raise ClipsaeError(f"{name} must be in [{lo:g}, {below:g}), not {v:g}")
        if lo is not None and v < lo:
            raise ClipsaeError(f"{name} must be at least {lo:g}, not {v:g}")
        if above is not None and not v > above:
            raise ClipsaeError(f"{name} must be {'positive' if above == 0 else f'above {above:g}'}, not {v:g}")


def identity(obj) -> dict:
    """The fields that decide a run's result, in declaration order."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.metadata.get("identity")}


def _kind(annotation):
    """(click type, is a flag) of a field's annotation; ``X | None`` is X."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    if base is bool:
        return None, True
    return {int: int, float: float, str: str, Path: None}.get(base, str), False


def shown_default(f: dataclasses.Field) -> str:
    """A field's default as help and docs write it."""
    if f.metadata.get("shown_default"):
        return f.metadata["shown_default"]
    if f.default is dataclasses.MISSING:
        return "required"
    if f.default is None:
        return "none"
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    return f"{f.default:,}" if isinstance(f.default, int) and f.default >= 10_000 else str(f.default)


def click_options(cls):
    """A decorator adding one click option per command-line field of ``cls``, in declaration order."""
    import click

    hints = typing.get_type_hints(cls)
    docs = docstrings(cls)

    def decorate(fn):
        for f in reversed(cli_fields(cls)):
            kind, is_flag = _kind(hints[f.name])
            if kind is None and not is_flag:
                kind = click.Path(path_type=Path)
            help_text = docs.get(f.name, "")
            if f.metadata.get("shown_default"):
                help_text += f" [default: {f.metadata['shown_default']}]"
            kw = {"help": help_text}
            if is_flag:
                kw["is_flag"] = True
            else:
                kw["type"] = click.Choice(f.metadata["choices"]) if f.metadata.get("choices") else kind
                if f.default is dataclasses.MISSING:
                    kw["required"] = True
                else:
                    kw["default"] = f.default
                    kw["show_default"] = f.default is not None and not f.metadata.get("shown_default")
            if f.metadata.get("metavar"):
                kw["metavar"] = f.metadata["metavar"]
            fn = click.option(flag(f), f.name, **kw)(fn)
        return fn

    return decorate


def markdown_rows(cls) -> list[str]:
    """docs/commands.md's rows for the command-line fields of ``cls``: option, default, meaning."""
    docs = docstrings(cls)
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731 (a pipe inside a cell ends it)
    return [f"| `{flag(f)}` | {cell(shown_default(f))} | {cell(docs.get(f.name, ''))} |" for f in cli_fields(cls)]


@dataclasses.dataclass(frozen=True)
class Rename:
    """An option that changed its name: the old one still works, hidden, for at least one release."""

    command: str
    old: str
    new: str
    since: str  # when it was renamed


RENAMES: list[Rename] = []  # every renamed option, for docs/commands.md's table (a test holds them together)


def renamed(command: str, old: str, new: str, dest: str, since: str, *, is_flag: bool = False, type=None):
    """A command decorator (below ``@click.command``) keeping ``old`` as a hidden alias of the option now
    called ``new`` (parameter ``dest``): using it prints one deprecation line and passes its value on."""
    import functools

    import click

    RENAMES.append(Rename(command, old, new, since))
    alias = f"renamed_{old.lstrip('-').replace('-', '_')}"

    def decorate(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            value = kwargs.pop(alias)
            if value is not None:
                click.echo(f"warning: {command} {old} is now {new}; the old name goes in a later release", err=True)
                kwargs[dest] = value
            return fn(*args, **kwargs)

        return click.option(old, alias, hidden=True, default=None, is_flag=is_flag, type=None if is_flag else type)(run)

    return decorate


def rename_rows() -> list[str]:
    """docs/commands.md's table of renamed options."""
    return [f"| `clipsae {r.command}` | `{r.old}` | `{r.new}` | {r.since} |"
            for r in sorted(RENAMES, key=lambda r: (r.command, r.old))]
