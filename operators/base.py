"""The operator contract: the only module the engine and the operators share.

An operator is plain code over a ``pyarrow.Table`` (map / filter) or a ``ray.data.Dataset``
(global). It declares typed parameters (pydantic), the columns it needs and adds, and the
resources it wants; the executor is the only place that knows about Ray.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
from typing import Any, ClassVar, Iterable, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

DROP_REASON = "drop_reason"
Kind = Literal["map", "filter", "global"]


class Params(BaseModel):
    """Base for operator parameter models: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(Params):
    pass


class Resources(BaseModel):
    """What one instance of the operator needs from the scheduler."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 1024
    concurrency: int | None = None  # None: as many as the cluster allows
    actor: bool = False  # True for operators holding a model: setup() runs once per actor


class Operator:
    """Base class. Subclasses set the class attributes and implement process() or run()."""

    name: ClassVar[str]
    kind: ClassVar[Kind] = "map"
    Params: ClassVar[type[Params]] = NoParams
    needs: ClassVar[frozenset[str]] = frozenset({"text"})
    adds: ClassVar[frozenset[str]] = frozenset()
    resources: ClassVar[Resources] = Resources()
    # extra Python modules the operator imports lazily; checked when a recipe loads
    requires: ClassVar[tuple[str, ...]] = ()
    # True for operators that may return more rows than they receive (e.g. one synthetic row per
    # document and style). The ledger then records `generated` = rows returned - rows received,
    # and the invariant becomes docs_in + generated = docs_out + dropped.
    generates: ClassVar[bool] = False

    def __init__(self, params: Params | dict | None = None, **kwargs: Any):
        if isinstance(params, Params):
            self.params = params
        else:
            self.params = self.Params(**{**(params or {}), **kwargs})
        self._ready = False

    # -- lifecycle -------------------------------------------------------------------------
    def setup(self) -> None:
        """Load models or other heavy state. Called once per process / Ray actor."""

    def ensure_setup(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    # -- map / filter ----------------------------------------------------------------------
    def process(self, batch: pa.Table) -> pa.Table:  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} is a {self.kind} operator")

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Notebook / unit-test entry point: runs setup() lazily, then process()."""
        self.ensure_setup()
        return self.process(batch)

    def counters(self, out: pa.Table) -> dict[str, float]:
        """Extra per-batch figures for the ledger (summed per step into stats.json `counters`),
        e.g. ``{"tokens_generated": 1234, "generate_s": 8.1}``. Called on process()'s output."""
        return {}

    # -- global ----------------------------------------------------------------------------
    def run(self, ds, ctx: "RunContext"):  # pragma: no cover - interface
        """Global operators: take a ray.data.Dataset, return one (rows to drop carry drop_reason)."""
        raise NotImplementedError(f"{type(self).__name__} is a {self.kind} operator")

    def run_table(self, table: pa.Table, ctx: "RunContext") -> pa.Table:  # pragma: no cover - interface
        """Optional for global operators: run() on the whole input as one table, in one process,
        with the same rows out. The engine uses it for a small input (pipeline.executor's
        in_memory_bytes(), GRISTMILL_IN_MEMORY_MB), where a distributed plan's start costs more
        than the work."""
        raise NotImplementedError(f"{type(self).__name__} has no in-memory path")

    @classmethod
    def has_table_path(cls) -> bool:
        return cls.run_table is not Operator.run_table

    @classmethod
    def columns_added(cls, params: "Params") -> frozenset[str]:
        """Columns this configuration adds (override when they depend on params)."""
        return frozenset(cls.adds)

    @classmethod
    def describe(cls) -> str:
        """The first paragraph of the class docstring, on one line (`gristmill ops` lists it)."""
        paragraph = inspect.cleandoc(cls.__doc__ or "").split("\n\n", 1)[0]
        return " ".join(paragraph.split())


class LocalDataset:
    """One in-memory table behind the few ray.data.Dataset methods a global operator's run()
    uses to plan and write (map_batches, materialize, iter_batches, repartition, take_all,
    schema): `run_table` can then call the same run() on a small input, with no Ray Data plan.
    map_batches calls the function once on the whole table, which is the same result for the
    row-wise functions run() maps."""

    def __init__(self, table: pa.Table):
        self.table = table

    def schema(self) -> pa.Schema:
        return self.table.schema

    def map_batches(self, fn, fn_args: tuple = (), fn_kwargs: dict | None = None, **_) -> "LocalDataset":
        return LocalDataset(fn(self.table, *fn_args, **(fn_kwargs or {})))

    def materialize(self) -> "LocalDataset":
        return self

    def repartition(self, *_, **__) -> "LocalDataset":
        return self

    def iter_batches(self, **_):
        yield self.table

    def take_all(self) -> list[dict]:
        return self.table.to_pylist()


class RunContext(BaseModel):
    """What a global operator may know about the run."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    step_id: str
    output_dir: str
    seed: int = 0
    max_workers: int | None = None  # None: all cluster CPUs

    def num_partitions(self, default: int = 8, nbytes: int | None = None,
                       bytes_per_partition: int = 64 * 2**20) -> int:
        """Shuffle partitions: enough to keep each near `bytes_per_partition` when the size is
        known (few partitions for small data: every partition costs an aggregator process),
        capped at `default` otherwise; never more than 4 per allowed worker."""
        cap = (self.max_workers or default) * 4
        if nbytes is not None:
            return max(1, min(cap, -(-nbytes // bytes_per_partition)))
        return max(1, min(default, cap))


# -- registry: the only meeting point of engine and operators -----------------------------
REGISTRY: dict[str, type[Operator]] = {}


def register(cls: type[Operator]) -> type[Operator]:
    """Class decorator: make an operator available to recipes under ``cls.name``.

    Checks the contract here, when the module is imported, so a mistake shows up at
    `gristmill validate` with the class named, not as a traceback from a Ray worker mid-run."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    if not getattr(cls, "name", None) or not isinstance(cls.name, str):
        raise TypeError(f"{where} must set a `name` (a string) to be registered")
    if cls.kind not in ("map", "filter", "global"):
        raise TypeError(f"{where}.kind must be map, filter or global, not {cls.kind!r}")
    params = cls.__dict__.get("Params", getattr(cls, "Params", None))
    if not (isinstance(params, type) and issubclass(params, Params)):
        what = f"{params.__module__}.{params.__qualname__}" if isinstance(params, type) else repr(params)
        bases = ", ".join(b.__module__ + "." + b.__qualname__ for b in getattr(params, "__mro__", ())[1:2])
        raise TypeError(
            f"{where}.Params must be a subclass of operators.base.Params, not {what}"
            + (f" (a subclass of {bases})" if bases else "")
            + ": write `from operators.base import Params` and `class MyParams(Params): ...`; "
            "operators.base.Params rejects unknown keys, so a misspelled parameter is an error instead of being ignored")
    for attr in ("needs", "adds"):
        value = getattr(cls, attr)
        if isinstance(value, str) or not all(isinstance(c, str) for c in value):
            raise TypeError(f"{where}.{attr} must be a set of column names, e.g. {{'text'}}, not {value!r}")
    if not isinstance(cls.resources, Resources):
        raise TypeError(f"{where}.resources must be operators.base.Resources(...), not {cls.resources!r}")
    method = "run" if cls.kind == "global" else "process"
    if getattr(cls, method) is getattr(Operator, method):
        raise TypeError(f"{where} is a {cls.kind} operator: it must implement "
                        + ("run(self, ds, ctx) -> ray.data.Dataset" if method == "run"
                           else "process(self, batch: pa.Table) -> pa.Table"))
    other = REGISTRY.get(cls.name)
    if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"operator name {cls.name!r} of {where} is taken by "
                        f"{other.__module__}.{other.__qualname__}; choose another name")
    REGISTRY[cls.name] = cls
    return cls


class PluginError(ImportError):
    """A plugin module named in a recipe (or `gristmill ops --plugins`) could not be imported."""


# plugin modules imported from a file: module name -> (real path, mtime_ns, size)
_PLUGIN_FILES: dict[str, tuple[str, int, int]] = {}


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec or spec.startswith(".")


def _import_file(path: str, name: str, spec_text: str):
    """Import a plugin from its file under module name `name` (re-imported when the file
    changed, so a notebook that edits the plugin gets the new code)."""
    real = os.path.realpath(path)
    package = os.path.basename(real) == "__init__.py"
    st = os.stat(real)
    key = (real, st.st_mtime_ns, st.st_size)
    current = sys.modules.get(name)
    if current is not None and _PLUGIN_FILES.get(name) == key:
        return current
    if current is not None and name not in _PLUGIN_FILES:
        raise PluginError(f"plugin {spec_text!r}: its module name {name!r} is already taken by "
                          f"{getattr(current, '__file__', None) or 'a built-in module'}; rename {real}")
    spec = importlib.util.spec_from_file_location(
        name, real, submodule_search_locations=[os.path.dirname(real)] if package else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        _PLUGIN_FILES.pop(name, None)
        raise PluginError(f"plugin {spec_text!r} ({real}) failed to import: {_where_in(e, real)}"
                          f"{type(e).__name__}: {e}") from e
    _PLUGIN_FILES[name] = key
    _ship_by_value(module)
    return module


def _ship_by_value(module) -> None:
    """A plugin imported from a file is not importable on Ray workers (its folder is not on their
    path; on a cluster the file is not even there): its classes travel with the pickled operator
    instead. Ray's own cloudpickle decides, so it is told here (Ray is imported lazily)."""
    if importlib.util.find_spec("ray") is None:  # in-process use without Ray installed
        return
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(module)


def _where_in(exc: BaseException, path: str) -> str:
    """'line 12: ' for the deepest traceback frame inside the plugin file, if any."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.realpath(f.filename) == path]
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"line {exc.lineno}: "
    return f"line {frames[-1].lineno}: " if frames else ""


def load_plugin(spec: str, base_dir: str | None = None):
    """Import one plugin module and return it. `spec` is a module name (looked up first in
    `base_dir`, the recipe's folder, then on the Python path) or a path to a ``.py`` file or a
    package folder (relative to `base_dir`). Raises PluginError saying what to change."""
    base = os.path.abspath(base_dir or os.getcwd())
    if _looks_like_path(spec):
        path = spec if os.path.isabs(spec) else os.path.join(base, spec)
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "__init__.py")):
            path = os.path.join(path, "__init__.py")
        if not os.path.isfile(path):
            raise PluginError(f"plugin {spec!r}: no such file {os.path.normpath(path)} (a plugin path is relative "
                              f"to the recipe's folder {base}); fix the path")
        name = os.path.basename(os.path.dirname(path) if path.endswith("__init__.py") else path)
        name = name[:-3] if name.endswith(".py") else name
        if not name.isidentifier():
            raise PluginError(f"plugin {spec!r}: {name!r} is not a valid Python module name; rename the file "
                              "(letters, digits and _)")
        return _import_file(path, name, spec)
    if not all(part.isidentifier() for part in spec.split(".")):
        raise PluginError(f"plugin {spec!r} is neither a module name (a.b.c) nor a path to a .py file")
    if "." not in spec:  # the recipe's own folder comes first, as a script's folder does for Python
        for candidate in (os.path.join(base, spec + ".py"), os.path.join(base, spec, "__init__.py")):
            if os.path.isfile(candidate):
                return _import_file(candidate, spec, spec)
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as e:
        if e.name and (spec == e.name or spec.startswith(e.name + ".")):
            raise PluginError(f"plugin {spec!r}: no module {spec!r} in the recipe's folder ({base}) or on the "
                              f"Python path; give the path of its .py file relative to the recipe "
                              f"(e.g. `plugins: [./{spec.replace('.', '/')}.py]`) or install it") from None
        raise PluginError(f"plugin {spec!r} failed to import: it needs module {e.name!r}, which is not "
                          f"installed (pip install ...)") from e
    except Exception as e:
        raise PluginError(f"plugin {spec!r} failed to import: {type(e).__name__}: {e}") from e


def load_operators(plugins: Iterable[str] = (), base_dir: str | None = None) -> dict[str, type[Operator]]:
    """Import every module of the ``operators`` package (they register themselves) and the
    plugin modules a recipe lists explicitly (see load_plugin; paths are relative to
    `base_dir`). Nothing else is ever imported from a recipe."""
    import operators as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"operators.{info.name}")
    for spec in plugins:
        load_plugin(spec, base_dir)
    return REGISTRY


# -- helpers shared by operators ----------------------------------------------------------
def text_column(batch: pa.Table, name: str = "text") -> pa.ChunkedArray:
    return batch.column(name)


def set_column(batch: pa.Table, name: str, values) -> pa.Table:
    """Add or replace a column (non-destructive scoring keeps everything else)."""
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    idx = batch.schema.get_field_index(name)
    if idx >= 0:
        return batch.set_column(idx, name, arr)
    return batch.append_column(name, arr)


def mark_dropped(batch: pa.Table, drop_mask, reason) -> pa.Table:
    """Fill ``drop_reason`` where ``drop_mask`` is true and the row is not already dropped.

    ``reason`` is a string, or an array of per-row strings. The first reason a row gets wins,
    so a filter can apply its rules in order and the row names the first rule it failed.
    """
    n = batch.num_rows
    mask = drop_mask if isinstance(drop_mask, (pa.Array, pa.ChunkedArray)) else pa.array(drop_mask, pa.bool_())
    mask = pc.fill_null(mask, False)
    if DROP_REASON in batch.column_names:
        current = batch.column(DROP_REASON)
    else:
        current = pa.nulls(n, pa.string())
    if isinstance(reason, str):
        reason_arr = pa.array([reason] * n, pa.string()) if n else pa.array([], pa.string())
    else:
        reason_arr = reason if isinstance(reason, (pa.Array, pa.ChunkedArray)) else pa.array(reason, pa.string())
    newly = pc.if_else(mask, reason_arr, pa.scalar(None, pa.string()))
    merged = pc.coalesce(current, newly)
    return set_column(batch, DROP_REASON, merged)


def kept_mask(batch: pa.Table) -> pa.ChunkedArray | pa.Array:
    if DROP_REASON not in batch.column_names:
        return pa.array([True] * batch.num_rows, pa.bool_())
    return pc.is_null(batch.column(DROP_REASON))
