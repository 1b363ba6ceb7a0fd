"""What `gristmill ops` prints: every operator with its whole description, and for one operator
its parameters (type, default, range, allowed values), the columns it needs and adds, and its
resources. Nothing is cut: long text is wrapped to the terminal width."""
from __future__ import annotations

import inspect
import json
import shutil
import textwrap
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from operators.base import Operator

_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >="),
           ("max_length", "length <="), ("multiple_of", "multiple of"))


def type_name(annotation: Any) -> str:
    """`int | None` -> 'int or null', `list[str]` -> 'list[str]', Literal -> 'one of a, b'."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def value_range(field: FieldInfo) -> str:
    """'>= 0, <= 1' from the field's constraints (pydantic keeps them as annotated-types metadata)."""
    found = []
    for item in field.metadata:
        for attr, sign in _BOUNDS:
            v = getattr(item, attr, None)
            if v is not None:
                found.append(f"{sign} {v}")
    return ", ".join(found)


def allowed_values(annotation: Any) -> list:
    """Every Literal value allowed anywhere in the annotation (e.g. `Literal['a', 'b'] | None`)."""
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return [v for a in typing.get_args(annotation) for v in allowed_values(a)]


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models inside an annotation (`UniMax | None`, `list[Phase]`): their fields are
    parameters too."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _nested_models(a)]


def param_rows(params_cls, prefix: str = "", _seen: frozenset = frozenset()) -> list[dict]:
    """One row per parameter; a nested model's fields follow it as `outer.inner` (`outer[].inner`
    inside a list)."""
    rows = []
    for name, f in params_cls.model_fields.items():
        if f.is_required():
            default = "required"
        elif f.default_factory is not None:
            default = json.dumps(f.default_factory(), default=str)
        else:
            default = json.dumps(f.default, default=str)
        rows.append({"name": prefix + name, "type": type_name(f.annotation), "default": default,
                     "range": value_range(f), "allowed": allowed_values(f.annotation),
                     "description": f.description or ""})
        is_list = typing.get_origin(f.annotation) is list or any(
            typing.get_origin(a) is list for a in typing.get_args(f.annotation))
        for model in _nested_models(f.annotation):
            if model not in _seen:  # a model that contains itself is listed once
                rows += param_rows(model, f"{prefix}{name}{'[]' if is_list else ''}.", _seen | {model})
    return rows


def _wrap(text: str, indent: str, width: int) -> str:
    return textwrap.fill(" ".join(text.split()), width=max(width, 40), initial_indent=indent,
                         subsequent_indent=indent, break_on_hyphens=False, break_long_words=False)


def _width() -> int:
    return min(shutil.get_terminal_size((100, 24)).columns, 120)


def list_operators(registry: dict[str, type[Operator]], origin: dict[str, str] | None = None,
                   width: int | None = None) -> str:
    """One entry per operator: name, kind, and the whole first paragraph of its docstring,
    wrapped under it. `origin` maps operator name -> plugin it came from (shown after the kind)."""
    width = width or _width()
    out = []
    for name in sorted(registry):
        cls = registry[name]
        src = f"  [plugin {origin[name]}]" if origin and name in origin else ""
        out.append(f"{name}  ({cls.kind}){src}")
        out.append(_wrap(cls.describe() or "(no docstring)", "    ", width))
    return "\n".join(out)


def describe_operator(cls: type[Operator], width: int | None = None) -> str:
    """Everything a recipe author needs about one operator."""
    width = width or _width()
    doc = inspect.cleandoc(cls.__doc__ or "(no docstring)")
    out = [f"{cls.name} ({cls.kind} operator, {cls.__module__}.{cls.__qualname__})", ""]
    for para in doc.split("\n\n"):
        lines = para.splitlines()
        # keep lists and indented blocks as written; wrap plain paragraphs
        if any(l.lstrip().startswith(("-", "*", "|")) or l.startswith("  ") for l in lines):
            out.extend("  " + l for l in lines)
        else:
            out.append(_wrap(para, "  ", width))
        out.append("")
    out.append(f"needs: {', '.join(sorted(cls.needs)) or '-'}")
    out.append(f"adds:  {', '.join(sorted(cls.adds)) or '-'}"
               + ("  (may depend on params)" if cls.columns_added.__func__ is not Operator.columns_added.__func__
                  else ""))
    if cls.generates:
        out.append("generates rows: yes (may return more rows than it receives)")
    r = cls.resources
    out.append(f"resources: num_cpus={r.num_cpus} num_gpus={r.num_gpus} batch_size={r.batch_size} "
               f"actor={r.actor} concurrency={r.concurrency if r.concurrency else 'auto'}"
               "  (override per step with `resources: {...}`)")
    if cls.requires:
        out.append(f"requires modules: {', '.join(cls.requires)}")
    rows = param_rows(cls.Params)
    out.append("params:" if rows else "params: none")
    for row in rows:
        head = f"  {row['name']}: {row['type']}, " + (
            "required" if row["default"] == "required" else f"default {row['default']}")
        if row["range"]:
            head += f", {row['range']}"
        out.append(head)
        if row["description"]:
            out.append(_wrap(row["description"], "      ", width))
    return "\n".join(out)
