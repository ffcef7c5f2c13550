"""How a setting is declared, and what follows from its declaration.

Each field of `worker.settings.Settings` carries, beside its type and default, a `Spec`: one
doc line, its bounds, whether an empty string means something, whether it is shown redacted,
and its variable when that is not `LLM_WORKER_<NAME>`. A choice setting's type is a `Literal`.
`declared()` reads them into one `Declared` per setting, which knows the variable's name, the
kind of value to read and the rule it must meet (`problem`). The environment reader
(`worker.config`), the generated README table, Helm schema and docs/configuration.md
(`tools/gen_settings.py`) and the tests all read the settings through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

import msgspec

__all__ = ["PREFIX", "Declared", "Spec", "declared"]

PREFIX = "LLM_WORKER_"

Number = int | float


@dataclass(frozen=True)
class Spec:
    """A setting's declaration, beside its type and default."""

    doc: str
    """One line: what it does, and what its special values (0, empty) mean."""
    ge: Number | None = None
    gt: Number | None = None
    le: Number | None = None
    blank: bool = False
    """A string setting that may be empty (otherwise an empty value is refused)."""
    fold: bool = False
    """A choice given in any case (`debug` is `DEBUG`)."""
    json_limits: bool = False
    """A JSON object of rate limits by name, `{"name": {"rpm": N, "tpm": N}}`."""
    env: str | None = None
    """The variable (or the pattern of variables) when it is not `LLM_WORKER_<NAME>`."""
    redact: Callable[[Any], object] | None = None
    """It may hold a secret: how it is shown in a repr or a log line."""


Kind = type[int] | type[float] | type[bool] | type[str] | type[dict[str, str]]


@dataclass(frozen=True)
class Declared:
    """One setting as declared: `Settings.<name>`, read from `env`."""

    name: str
    env: str
    kind: Kind
    choices: tuple[str, ...]
    """The values of its `Literal` type; () for a setting that is not a choice."""
    default: object
    spec: Spec

    @property
    def from_prefix(self) -> bool:
        """Read from `LLM_WORKER_<NAME>` (not a fixed name, not a family of variables)."""
        return self.spec.env is None

    @property
    def secret(self) -> bool:
        """It may hold a secret, and is shown redacted."""
        return self.spec.redact is not None

    def shown(self, value: object) -> object:
        """`value` fit for a repr or a log line."""
        return value if self.spec.redact is None else self.spec.redact(value)

    def choice(self, raw: str) -> str:
        """A choice as declared (`debug` -> `DEBUG` when it folds); anything else unchanged."""
        if self.spec.fold and raw.upper() in self.choices:
            return raw.upper()
        return raw

    def problem(self, value: Any) -> str | None:
        """What is wrong with a value of the setting's type (`"must be >= 1"`), or None."""
        if self.choices:
            folded = value.upper() if self.spec.fold and isinstance(value, str) else value
            return None if folded in self.choices else f"must be one of {', '.join(self.choices)}"
        if self.kind is str and not self.spec.blank and not str(value).strip():
            return "must not be empty"
        return _bounds_problem(self.spec, value)


def _bounds_problem(spec: Spec, value: Any) -> str | None:
    """`"must be ..."` naming all of a number's bounds when it is outside them; None inside."""
    inside = (
        (spec.ge is None or value >= spec.ge)
        and (spec.gt is None or value > spec.gt)
        and (spec.le is None or value <= spec.le)
    )
    return None if inside else f"must be {_bounds(spec)}"


def _bounds(spec: Spec) -> str:
    if spec.ge is not None and spec.le is not None:
        return f"between {_num(spec.ge)} and {_num(spec.le)}"
    if spec.gt is not None and spec.le is not None:
        return f"in ({_num(spec.gt)}, {_num(spec.le)}]"
    limits = ((">=", spec.ge), (">", spec.gt), ("<=", spec.le))
    return " and ".join(f"{sign} {_num(x)}" for sign, x in limits if x is not None)


def _num(x: Number) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _env_of(name: str, spec: Spec) -> str:
    return spec.env or PREFIX + name.upper()


def _kind(name: str, tp: object) -> tuple[Kind, tuple[str, ...]]:
    if get_origin(tp) is Literal:
        choices = get_args(tp)
        if not all(isinstance(c, str) for c in choices):
            raise TypeError(f"{name}: a choice setting's values are strings")
        return str, tuple(str(c) for c in choices)
    if get_origin(tp) is dict:
        return dict, ()
    for kind in (bool, int, float, str):
        if tp is kind:
            return kind, ()
    raise TypeError(f"{name}: a setting is an int, float, bool, str, Literal or dict[str, str]")


def declared(struct: type[msgspec.Struct]) -> tuple[Declared, ...]:
    """Every field of `struct`, in order, as declared; TypeError if one has no `Spec`."""
    hints = get_type_hints(struct, include_extras=True)
    out: list[Declared] = []
    for field in msgspec.structs.fields(struct):
        tp, *extras = get_args(hints[field.name]) or (hints[field.name],)
        specs = [e for e in extras if isinstance(e, Spec)]
        if len(specs) != 1:
            raise TypeError(f"Settings.{field.name} needs one Spec: Annotated[type, Spec(...)]")
        kind, choices = _kind(field.name, tp)
        default = (
            field.default if field.default_factory is msgspec.NODEFAULT else field.default_factory()
        )
        spec = specs[0]
        out.append(Declared(field.name, _env_of(field.name, spec), kind, choices, default, spec))
    return tuple(out)
