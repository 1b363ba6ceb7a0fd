"""The operator contract: the only module the engine and the operators share.

An operator is plain code over a ``pyarrow.Table`` (map / filter) or a ``ray.data.Dataset``
(global). It declares typed parameters (pydantic), the columns it needs and adds, and the
resources it wants; the executor is the only place that knows about Ray.
"""
from __future__ import annotations

import importlib
import pkgutil
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

    @classmethod
    def columns_added(cls, params: "Params") -> frozenset[str]:
        """Columns this configuration adds (override when they depend on params)."""
        return frozenset(cls.adds)

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


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
    """Class decorator: make an operator available to recipes under ``cls.name``."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} must set a `name` to be registered")
    if cls.kind not in ("map", "filter", "global"):
        raise TypeError(f"{cls.__name__}.kind must be map, filter or global, not {cls.kind!r}")
    other = REGISTRY.get(cls.name)
    if other is not None and other is not cls and other.__qualname__ != cls.__qualname__:
        raise TypeError(f"operator name {cls.name!r} is taken by {other.__module__}.{other.__name__}")
    REGISTRY[cls.name] = cls
    return cls


def load_operators(plugins: Iterable[str] = ()) -> dict[str, type[Operator]]:
    """Import every module of the ``operators`` package (they register themselves) and the
    plugin modules a recipe lists explicitly. Nothing else is ever imported from a recipe."""
    import operators as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"operators.{info.name}")
    for mod in plugins:
        importlib.import_module(mod)
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
