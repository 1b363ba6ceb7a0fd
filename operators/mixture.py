"""mixture: realize a token mixture over groups and write megatron-core `.bin/.idx` shards."""
from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from operators.base import LocalDataset, Operator, Params, Resources, mark_dropped, register, set_column
from operators.tokenize import DEFAULT_TOKENIZER, _source_file

GROUP = "group"
EPOCHS = "epochs"
BUCKETS = 4096  # histogram resolution per level (two levels: 2^24 positions on the draw order)
B1_SHIFT, B2_SHIFT = 52, 40
SMALL_BYTES = 256 << 20  # a phase below this many token bytes is written by one task
MIXED = "\x00mixed"  # the mixed layout's one shard set (not a group name)


class MixtureError(ValueError):
    """A target the data cannot realize (names the group, its tokens and the cap)."""


# -- parameters ----------------------------------------------------------------------------
class UniMax(Params):
    max_epochs: float = Field(4.0, gt=0, description="N: no group gets more than N epochs of its own tokens")


class Method(Params):
    """One way of choosing group weights (give exactly one; none: natural proportions)."""

    weights: dict[str, float] | None = Field(None, description="explicit {group: weight} (normalized)")
    temperature: float | None = Field(None, gt=0, description="p_i proportional to n_i^(1/T)")
    unimax: UniMax | None = Field(None, description="UniMax (Chung et al. 2023)")

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("weights", "temperature", "unimax") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of weights / temperature / unimax, not {' and '.join(given)}")
        if self.weights is not None:
            if not self.weights or any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
                raise ValueError("weights must be non-negative with a positive sum")
        return self

    def label(self) -> str:
        extra = ""
        if getattr(self, "group_share", None) is not None:
            gs = self.group_share
            extra = f", {gs.share:.0%} to {'all but ' if gs.exclude else ''}{'/'.join(gs.groups)}"
        if getattr(self, "boost", None) is not None:
            extra = f", x{self.boost.factor:g} for {'/'.join(self.boost.groups)}"
        return self._label() + extra

    def _label(self) -> str:
        if self.weights is not None:
            return "weights"
        if self.temperature is not None:
            return f"temperature {self.temperature:g}"
        if self.unimax is not None:
            return f"unimax N={self.unimax.max_epochs:g}"
        return "natural"


class GroupShare(Params):
    """`share` of the phase's tokens go to the groups `groups` selects (or all but them with
    `exclude`), each side split in proportion to the groups' tokens."""

    groups: list[str]
    exclude: bool = False
    share: float = Field(..., ge=0, le=1)


class Boost(Params):
    groups: list[str]
    factor: float = Field(..., gt=0)


class Phase(Method):
    share: float = Field(..., gt=0, le=1, description="this phase's share of total_tokens")
    name: str | None = None
    group_share: GroupShare | None = Field(None, description="a share of the phase for a set of groups")
    boost: Boost | None = Field(None, description="natural (or temperature) weights x factor for these groups")


def _selector(spec: dict, group_by: str) -> tuple[list[str], bool]:
    """{language_not: en} / {language: [fr, de]} -> (groups, exclude); the key names group_by."""
    if len(spec) != 1:
        raise ValueError(f"give one selector like {{{group_by}: [a, b]}} or {{{group_by}_not: a}}, not {spec}")
    (key, val), = spec.items()
    exclude = key.endswith("_not")
    col = key[:-4] if exclude else key
    if col != group_by:
        raise ValueError(f"selector {key!r} names column {col!r} but the mixture groups by {group_by!r}")
    return ([val] if isinstance(val, str) else [str(v) for v in val]), exclude


class Curriculum(Params):
    share_of: dict[str, str | list[str]] = Field(..., description="e.g. {language_not: en}")
    from_: float = Field(..., alias="from", ge=0, le=1)
    to: float = Field(..., ge=0, le=1)
    phases: int = Field(3, ge=2)
    model_config = {**Params.model_config, "populate_by_name": True}


class Final(Params):
    fraction: float = Field(..., gt=0, lt=1, description="share of the budget for the last phase")
    upsample: dict[str, str | list[str]] = Field(..., description="e.g. {source: [wiki, code]}")
    factor: float = Field(3.0, gt=0)


class MixtureParams(Method):
    group_by: str = Field("language", description="column naming each document's group")
    total_tokens: float | None = Field(None, gt=0, description="token budget (default: all tokens available)")
    max_epochs: float | None = Field(None, gt=0, description="epoch cap for every group, over the whole schedule")
    redistribute: bool = Field(False, description="a capped group's surplus goes to the others instead of an error")
    layout: Literal["per_group", "mixed"] = Field("per_group", description="one shard set per group (+ Megatron "
                                                  "blend) or all groups shuffled together")
    shard_tokens: int = Field(1 << 27, ge=1, description="target tokens per shard")
    num_shards: int | None = Field(None, ge=1, description="mixed layout: this many shards (overrides shard_tokens)")
    tokenizer: str = Field(DEFAULT_TOKENIZER, description="the tokenizer `tokenize` used (manifest, dtype)")
    seed: int | None = Field(None, description="draws and shuffles (default: the recipe's seed)")
    phases: list[Phase] | None = Field(None, description="ordered phases, each with its share and method")
    curriculum: Curriculum | None = Field(None, description="PolyLM: a set's share from -> to over N phases")
    temperatures: list[float] | None = Field(None, description="Cooldown: one phase per temperature")
    final: Final | None = Field(None, description="an end-of-training phase upsampling some groups")
    partition_by: str | None = Field(None, description="Branch-Train-Merge: also one shard set per value of "
                                     "this column (every document of the value once)")
    max_partitions: int = Field(1024, ge=1, description="partition_by: more distinct values is an error")

    @model_validator(mode="after")
    def _phases(self):
        shorthands = [k for k in ("phases", "curriculum", "temperatures") if getattr(self, k)]
        if len(shorthands) > 1:
            raise ValueError(f"give one of phases / curriculum / temperatures, not {' and '.join(shorthands)}")
        if self.curriculum:
            _selector(self.curriculum.share_of, self.group_by)
        if self.final:
            _selector(self.final.upsample, self.group_by)
        if self.phases:
            if any(getattr(self, k) is not None for k in ("weights", "temperature", "unimax")):
                raise ValueError("with phases, give the method inside each phase, not at the top")
            total = sum(p.share for p in self.phases)
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"phase shares must sum to 1, they sum to {total:g}")
        _source_file(self.tokenizer)
        return self

    def phase_list(self) -> list[Phase]:
        """The schedule, shorthands expanded; `final` takes its fraction off the end."""
        head = 1.0 - (self.final.fraction if self.final else 0.0)
        if self.phases:
            phases = [p.model_copy(update={"share": p.share * head}) for p in self.phases]
        elif self.curriculum:
            c = self.curriculum
            groups, exclude = _selector(c.share_of, self.group_by)
            phases = [Phase(share=head / c.phases, name=f"phase {k}", temperature=self.temperature,
                            group_share=GroupShare(groups=groups, exclude=exclude,
                                                   share=c.from_ + (c.to - c.from_) * k / (c.phases - 1)))
                      for k in range(c.phases)]
        elif self.temperatures:
            phases = [Phase(share=head / len(self.temperatures), temperature=t, name=f"T={t:g}")
                      for t in self.temperatures]
        else:
            phases = [Phase(share=head, weights=self.weights, temperature=self.temperature, unimax=self.unimax)]
        if self.final:
            groups, _ = _selector(self.final.upsample, self.group_by)
            last_t = self.temperatures[-1] if self.temperatures else self.temperature
            phases.append(Phase(share=self.final.fraction, name="final", temperature=last_t,
                                boost=Boost(groups=groups, factor=self.final.factor)))
        return phases


# -- planning (driver side, sizes = number of groups) ----------------------------------------
def unimax_allocation(available: dict[str, float], budget: float, caps: dict[str, float]) -> dict[str, float]:
    """UniMax: groups from smallest to largest each get an even share of the budget still left,
    capped at `caps[g]` tokens; what a capped group cannot use flows to the larger ones."""
    out, left = {}, float(budget)
    order = sorted(available, key=lambda g: (available[g], g))
    for k, g in enumerate(order):
        share = left / (len(order) - k)
        out[g] = min(share, caps[g])
        left -= out[g]
    return out


def method_weights(method: Method, available: dict[str, float]) -> dict[str, float]:
    """Target weights (summing to 1) over the groups present, before caps."""
    groups = sorted(available)
    if method.weights is not None:
        missing = sorted(set(method.weights) - set(groups))
        if missing and any(method.weights[g] > 0 for g in missing):
            raise MixtureError(f"weights name group(s) {', '.join(map(repr, missing))} that have no tokens "
                               f"(groups present: {', '.join(groups)})")
        raw = {g: float(method.weights.get(g, 0.0)) for g in groups}
    elif method.temperature is not None:
        raw = {g: float(available[g]) ** (1.0 / method.temperature) for g in groups}
    else:
        raw = {g: float(available[g]) for g in groups}
    boost = getattr(method, "boost", None)
    if boost is not None:
        raw = {g: w * (boost.factor if g in boost.groups else 1.0) for g, w in raw.items()}
    s = sum(raw.values())
    weights = {g: raw[g] / s for g in groups}
    gs = getattr(method, "group_share", None)
    if gs is not None:
        inside = [g for g in groups if (g in gs.groups) != gs.exclude]
        outside = [g for g in groups if g not in inside]
        if not inside or not outside:
            raise MixtureError(f"group_share: the selection {gs.groups} (exclude={gs.exclude}) leaves one side "
                               f"empty among {groups}")
        w_in, w_out = sum(weights[g] for g in inside), sum(weights[g] for g in outside)
        weights = {g: (gs.share * weights[g] / w_in if g in inside else (1 - gs.share) * weights[g] / w_out)
                   for g in groups}
    return weights


def capped_targets(weights: dict[str, float], budget: float, caps: dict[str, float], redistribute: bool,
                   available: dict[str, float], max_epochs: float | None, phase: str) -> tuple[dict, list[str]]:
    """Tokens per group = weight x budget, under the caps. Over a cap: an error naming the group,
    or (redistribute) the group gets its cap and the surplus is shared by the uncapped groups in
    proportion to their weights (water-filling)."""
    notes: list[str] = []
    targets = {g: w * budget for g, w in weights.items()}
    over = [g for g in targets if targets[g] > caps[g] * (1 + 1e-9) + 1e-6]
    if over and not redistribute:
        g = over[0]
        raise MixtureError(f"{phase}: group {g!r} needs {targets[g]:,.0f} tokens but has {available[g]:,} "
                           f"tokens and an epoch cap of {max_epochs:g} ({caps[g]:,.0f} tokens left under it); "
                           "lower its weight or total_tokens, raise max_epochs, or set redistribute: true")
    fixed: dict[str, float] = {}
    while over:
        for g in over:
            fixed[g] = caps[g]
            notes.append(f"{phase}: group {g!r} capped at {caps[g]:,.0f} tokens for a target of {targets[g]:,.0f} "
                         f"({max_epochs:g} epochs of its {available[g]:,} tokens over the whole schedule, less "
                         f"what earlier phases used); its surplus went to the other groups")
        free = [g for g in weights if g not in fixed]
        left = budget - sum(fixed.values())
        wsum = sum(weights[g] for g in free)
        if not free or wsum <= 0:
            if left > 1e-6:
                raise MixtureError(f"{phase}: every group is at its epoch cap ({max_epochs:g}); "
                                   f"{left:,.0f} tokens of the budget cannot be realized")
            break
        targets = {**fixed, **{g: weights[g] / wsum * left for g in free}}
        over = [g for g in free if targets[g] > caps[g] * (1 + 1e-9) + 1e-6]
    return targets, notes


def plan_phases(available: dict[str, int], phases: list[Phase], total_tokens: float,
                max_epochs: float | None, redistribute: bool) -> list[dict]:
    """Per phase: budget, method, target weights and tokens per group. Epoch caps hold over the
    whole schedule: a phase's cap is what earlier phases left of max_epochs x available."""
    used = {g: 0.0 for g in available}
    out = []
    for i, ph in enumerate(phases):
        label = ph.name or (f"phase {i}" if len(phases) > 1 else "mixture")
        budget = ph.share * float(total_tokens)
        caps = {g: (max_epochs * available[g] - used[g]) if max_epochs else math.inf for g in available}
        if ph.unimax is not None:
            n = ph.unimax.max_epochs if max_epochs is None else min(ph.unimax.max_epochs, max_epochs)
            caps = {g: min(caps[g], n * available[g] - used[g]) for g in available}
            targets = unimax_allocation(available, budget, caps)
            notes = []
            short = budget - sum(targets.values())
            if short > 1e-6 * budget:
                raise MixtureError(f"{label}: UniMax with N={n:g} can place only {sum(targets.values()):,.0f} of "
                                   f"{budget:,.0f} tokens: every group is at its cap")
            weights = {g: targets[g] / budget for g in targets}
        else:
            weights = method_weights(ph, available)
            targets, notes = capped_targets(weights, budget, caps, redistribute, available, max_epochs, label)
        for g in targets:
            used[g] += targets[g]
        groups = sorted(available)
        blocks, select = [groups], None
        if ph.group_share is not None:
            gs = ph.group_share
            inside = [g for g in groups if (g in gs.groups) != gs.exclude]
            blocks = [inside, [g for g in groups if g not in inside]]
            select = {"groups": gs.groups, "exclude": gs.exclude, "share": gs.share}
        elif ph.boost is not None:
            inside = [g for g in groups if g in ph.boost.groups]
            blocks = [inside, [g for g in groups if g not in inside]]
        out.append({"name": label, "share": ph.share, "method": ph.label(), "budget": budget,
                    "target_weights": {g: weights[g] for g in sorted(weights)},
                    "targets": {g: targets[g] for g in sorted(targets)}, "notes": notes,
                    "blocks": [b for b in blocks if b], "select": select})
    return out


def whole_document_note(ph: dict, group: str, target: float, got: int, lower: int, upper: int,
                        ahead: float = 0.0) -> str:
    """Why a group misses its target by more than 1% of the phase: documents are whole."""
    budget = ph["budget"]
    cut = f" (the document at the cut holds {upper - lower:,})" if upper > lower else ""
    carry = (f", after earlier phases gave it {ahead:+,.0f} tokens against their targets" if abs(ahead) >= 1
             else "")
    return (f"{ph['name']}: group {group!r} gets {got:,} tokens for a target of {target:,.0f} "
            f"({got - target:+,.0f}, {abs(got - target) / budget:.2%} of the phase's {budget:,.0f}): documents "
            f"are whole and the cuts of its draw order around the target give {lower:,} or {upper:,} tokens in "
            f"this phase{cut}{carry}; the other groups of its side absorb the difference")


# -- per-document draws (workers) -------------------------------------------------------------
def draw_order(ids, seed: int) -> np.ndarray:
    """Each document's place in its group's draw order: a uint64 hash of (seed, id)."""
    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    return pl.Series(arr.cast(pa.string())).hash(seed=seed).to_numpy()


def doc_keys(batch: pa.Table, group_col: str, seed: int, partition_col: str | None = None) -> pa.Table:
    """(group, u, n_tokens[, part]) of the documents that have a group: all the planner needs."""
    keys = pa.table({GROUP: pc.cast(batch.column(group_col), pa.string()),
                     "u": pa.array(draw_order(batch.column("id"), seed), pa.uint64()),
                     "n_tokens": pc.cast(batch.column("n_tokens"), pa.int64())})
    if partition_col:
        keys = keys.append_column("part", pc.cast(batch.column(partition_col), pa.string()))
    return keys.filter(pc.is_valid(keys.column(GROUP)))


def _bucketed(batch: pa.Table, focus: list | None) -> pa.Table:
    """Per-batch partial histogram: tokens per (group, b1, b2) of this batch's documents."""
    df = pl.from_arrow(batch).with_columns(
        (pl.col("u") // (1 << B1_SHIFT)).cast(pl.Int64).alias("b1"),
        ((pl.col("u") // (1 << B2_SHIFT)) % BUCKETS).cast(pl.Int64).alias("b2"))
    if focus is None:
        df = df.with_columns(pl.lit(0, pl.Int64).alias("b2"))
    else:
        want = pl.DataFrame({GROUP: [f[0] for f in focus], "b1": [f[1] for f in focus]},
                            schema={GROUP: pl.String, "b1": pl.Int64})
        df = df.join(want, on=[GROUP, "b1"], how="semi")
    return df.group_by([GROUP, "b1", "b2"]).agg(pl.len().alias("docs"), pl.col("n_tokens").sum().alias("tok")) \
        .sort([GROUP, "b1", "b2"]).to_arrow()


def _fold(partials, key_of, size: int) -> dict:
    """Fold the workers' partial aggregates into fixed-size per-key arrays, streaming: the
    driver holds (keys x size) numbers, however large the corpus (no shuffle either: on a
    small corpus a hash-shuffle aggregation costs more than everything else)."""
    acc: dict = {}
    for b in partials.iter_batches(batch_format="pyarrow", batch_size=None):
        df = pl.from_arrow(b)
        for k, part in df.group_by(key_of(df), maintain_order=True):
            arr = acc.setdefault(k if len(k) > 1 else k[0], np.zeros((2, size), np.int64))
            idx = part["b1" if key_of is _by_group else "b2"]
            np.add.at(arr[0], idx.to_numpy(), part["docs"].to_numpy())
            np.add.at(arr[1], idx.to_numpy(), part["tok"].to_numpy())
    return acc


def _by_group(df):
    return [GROUP]


def _by_group_b1(df):
    return [GROUP, "b1"]


def _histogram(keys, focus: list | None) -> dict:
    """focus None: {group: [docs, tokens] per b1}; else {(group, b1): [docs, tokens] per b2}."""
    partials = keys.map_batches(_bucketed, fn_args=(focus,), batch_format="pyarrow", batch_size=None)
    return _fold(partials, _by_group if focus is None else _by_group_b1, BUCKETS)


def _threshold(b1: int, b2: int) -> int:
    """The draw-order value at the start of (b1, b2); the end of the last bucket is clamped to
    the largest uint64 (2^64 does not fit)."""
    return min((b1 << B1_SHIFT) + (b2 << B2_SHIFT), (1 << 64) - 1)


def cut_options(keys, totals: dict[str, int], wants: dict[str, set[float]], h1: dict | None = None
                ) -> dict[tuple[str, float], list[tuple[int, int]]]:
    """For each (group, fraction f): the cuts of the draw order on either side of f x the group's
    tokens, as (threshold t, tokens of the documents with u < t): the last cut at or below the
    target and the first at or above it (one when a cut hits it). Two histogram passes (partial
    aggregates folded into groups x 4096 arrays), so the driver holds nothing that grows with the
    corpus and the cuts fall between two documents for any corpus up to ~10^7 documents a group."""
    wants = {g: fs for g, fs in wants.items() if fs}
    if not wants:
        return {}
    h1 = h1 if h1 is not None else _histogram(keys, None)
    first = {}
    for g, fs in wants.items():
        cum = np.cumsum(h1[g][1])
        for f in sorted(fs):
            target = f * totals[g]
            b = min(int(np.searchsorted(cum, target, side="left")), BUCKETS - 1)
            base = int(cum[b - 1]) if b else 0
            first[(g, f)] = (b, base, target - base)
    h2 = _histogram(keys, sorted({(g, b) for (g, _), (b, _, _) in first.items()}))
    out = {}
    for (g, f), (b, base, rest) in first.items():
        cands = np.concatenate([[0], np.cumsum(h2.get((g, b), np.zeros((2, BUCKETS), np.int64))[1])])
        lo = max(int(np.searchsorted(cands, rest, side="right")) - 1, 0)
        hi = min(int(np.searchsorted(cands, rest, side="left")), BUCKETS)
        out[(g, f)] = [(_threshold(b, k), base + int(cands[k])) for k in sorted({lo, hi})]
    return out


def choose_cuts(phases: list[dict], available: dict[str, int], cum: dict[str, np.ndarray],
                options: dict, max_epochs: float | None, tolerance: float = 0.01) -> dict:
    """Pick, per phase and group, the cut of the draw order below or above its target (documents
    are whole, so a group's target falls between two cuts). Nearest-per-group rounding is biased
    when many small groups have documents larger than their share (PolyLM on ~400 languages of
    2-4 documents: most round to nothing, 0.248 realized for 0.30), so the choice carries the
    running error over the groups (error diffusion): inside each of the phase's blocks (a
    group_share's two sides, a boost's groups and the rest) the groups with one possible cut go
    first (a phase that must not move them, a cap), then the others from the coarsest cut to the
    finest, and each takes the side that brings the running sum nearest to zero. A first pass
    takes only sides within `tolerance` of the phase's tokens of the group's own target (when one
    is); if that leaves the block's sum above half the tolerance, the groups' tolerance doubles
    until it does not, and last a pass without that preference (whose sum stays within half the
    coarsest cut, the fine groups at the end pulling it to a few tokens); the best pass wins: a
    schedule's shares matter more than one group's.
    The cumulative cut never moves back (a phase emits >= 0 copies) nor past max_epochs.
    Returns {"groups": {g: {"whole": [...], "thresh": [...]}}, "tokens": [{g: tokens} per phase],
    "wide": [[(g, target, tokens, lower cut, upper cut, tokens ahead before)] per phase]} (wide:
    groups no cut brings within tolerance)."""
    groups = sorted(available)
    pos = {g: (0, 0, 0) for g in groups}  # (cumulative tokens, whole epochs, threshold) chosen so far
    dev = {g: 0.0 for g in groups}  # chosen minus target, cumulative
    out = {"groups": {g: {"whole": [], "thresh": []} for g in groups}, "tokens": [], "wide": []}
    for p, ph in enumerate(phases):
        tol = tolerance * ph["budget"]
        cap = {g: max_epochs * available[g] if max_epochs else math.inf for g in groups}
        cands = {}
        for g in groups:
            x = float(cum[g][p])
            whole, f = int(math.floor(x)), float(x - math.floor(x))
            base = whole * available[g]
            opts = [(base + tok, whole, t) for t, tok in options[(g, f)]] if f > 0 else [(base, whole, 0)]
            ok = [o for o in opts if pos[g][0] <= o[0] <= cap[g] + 1e-6] if ph["targets"][g] > 0 else []
            cands[g] = (x * available[g], ok or [pos[g]])  # no target in this phase: no copies
        blocks = ph.get("blocks") or [groups]

        def err(g, o):
            return (o[0] - cands[g][0]) - dev[g]  # this phase's tokens minus this phase's target

        def diffuse(block, near_tol):
            running, picks = 0.0, {}
            # groups with one possible cut first (their error is forced), then coarse to fine
            for g in sorted(block, key=lambda g: (len(cands[g][1]) > 1, -(max(o[0] for o in cands[g][1]) -
                                                                          min(o[0] for o in cands[g][1])), g)):
                opts = cands[g][1]
                near = [o for o in opts if abs(err(g, o)) <= near_tol]
                if not near and near_tol >= 0:  # none within: the nearest, the others compensate
                    near = [min(opts, key=lambda o: (abs(err(g, o)), o[0]))]
                picks[g] = min(near or opts, key=lambda o: (abs(running + err(g, o)), abs(err(g, o)), o[0]))
                running += err(g, picks[g])
            return abs(running), picks

        got, wide = {}, []
        for block in blocks:
            # keep every group within tolerance when that also keeps the block's sum within half
            # of it; else widen the groups' tolerance (x2, x4, ...) until the block's sum is
            # (a schedule's shares matter more than one group), keeping the best pass
            best = None
            for near_tol in [tol * 2 ** k for k in range(8)] + [-1.0]:  # -1: no preference
                miss, picks = diffuse(block, near_tol)
                if best is None or miss < best[0]:
                    best = (miss, picks)
                if miss <= tol / 2:
                    break
            picks = best[1]
            for g in sorted(block):
                pick, e = picks[g], err(g, picks[g])
                if abs(e) > tol:
                    opts = cands[g][1]
                    wide.append((g, ph["targets"][g], pick[0] - pos[g][0], min(o[0] for o in opts) - pos[g][0],
                                 max(o[0] for o in opts) - pos[g][0], dev[g]))
                got[g] = pick[0] - pos[g][0]
                dev[g] = pick[0] - cands[g][0]
                pos[g] = pick
        for g in groups:
            out["groups"][g]["whole"].append(int(pos[g][1]))
            out["groups"][g]["thresh"].append(int(pos[g][2]))
        out["tokens"].append(got)
        out["wide"].append(sorted(wide))
    return out


def cumulative_copies(u: np.ndarray, groups: np.ndarray, plan: dict, p: int) -> np.ndarray:
    """Copies of each document emitted up to the end of phase p: floor(R) + [u < t(frac(R))],
    R = the group's cumulative epochs. One draw order per document for the whole schedule, so
    a phase walks on through the order where the last one stopped: no document repeats within a
    phase before its group's every document has been used once in it, and epoch caps hold per
    document across phases."""
    out = np.zeros(len(u), dtype=np.int64)
    if p < 0:
        return out
    for g, gp in plan["groups"].items():
        m = groups == g
        if not m.any():
            continue
        whole, t = gp["whole"][p], gp["thresh"][p]
        out[m] = whole + (u[m] < np.uint64(t)).astype(np.int64)
    return out


def copies_in_phase(batch: pa.Table, plan: dict, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(first epoch, copies) of each row in phase p."""
    u = draw_order(batch.column("id"), plan["seed"])
    groups = np.asarray(pc.fill_null(pc.cast(batch.column(plan["group_by"]), pa.string()), "\x00").to_pylist(),
                        dtype=object)
    before = cumulative_copies(u, groups, plan, p - 1)
    return before, cumulative_copies(u, groups, plan, p) - before


def emit(batch: pa.Table, plan: dict, p: int) -> pa.Table:
    """One row per emitted copy in phase p (id, group, epoch, tokens, n_tokens) with its shard
    and its place in the shard (a hash of seed, id and epoch: a real shuffle, the same for any
    batching or number of workers)."""
    first, copies = copies_in_phase(batch, plan, p)
    rows = np.repeat(np.arange(batch.num_rows), copies)
    within = np.arange(len(rows)) - np.repeat(np.cumsum(copies) - copies, copies)
    epoch = (first[rows] + within).astype(np.int32)
    out = pa.table({"id": pc.cast(batch.column("id"), pa.string()).take(rows),
                    GROUP: pc.cast(batch.column(plan["group_by"]), pa.string()).take(rows),
                    "epoch": pa.array(epoch), "n_tokens": pc.cast(batch.column("n_tokens"), pa.int64()).take(rows),
                    "tokens": batch.column("tokens").take(rows)})
    return _place(out, epoch, plan["seed"], out.column(GROUP), plan["phases"][p]["sets"])


def _place(out: pa.Table, epoch: np.ndarray, seed: int, values, sets: dict) -> pa.Table:
    """Each row's shard and its place in it: a hash of (seed, id, epoch) picks the shard among
    the `n` of the set its value (group or partition) belongs to, and orders the shard."""
    key = pl.DataFrame({"id": pl.from_arrow(out.column("id")), "e": epoch}) \
        .select(pl.struct("id", "e").hash(seed=seed + 7919)).to_series().to_numpy()
    if MIXED in sets:
        n = np.full(len(key), sets[MIXED]["n"], np.int64)
        offset = np.full(len(key), sets[MIXED]["offset"], np.int64)
    else:
        v = pl.Series(values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values)
        names = list(sets)
        n = v.replace_strict(names, [sets[k]["n"] for k in names], default=0, return_dtype=pl.Int64).to_numpy()
        offset = v.replace_strict(names, [sets[k]["offset"] for k in names], default=0,
                                  return_dtype=pl.Int64).to_numpy()
        if (n == 0).any():  # a planning bug, never a silent misplacement
            raise MixtureError(f"mixture: {int((n == 0).sum())} copies belong to no shard set")
    local = ((key >> np.uint64(32)) * n.astype(np.uint64)) >> np.uint64(32)
    out = out.append_column("_key", pa.array(key, pa.uint64()))
    return out.append_column("_shard", pa.array(offset + local.astype(np.int64)))


def emit_partitions(batch: pa.Table, plan: dict) -> pa.Table:
    """Every document with a group and a partition value once (epoch 0), placed in its
    partition's shard set (partition_by: Branch-Train-Merge domains)."""
    part = plan["partition"]
    group = pc.cast(batch.column(plan["group_by"]), pa.string())
    value = pc.cast(batch.column(part["by"]), pa.string())
    has = pc.and_(pc.is_valid(group), pc.is_valid(value))
    batch, group, value = batch.filter(has), group.filter(has), value.filter(has)
    epoch = np.zeros(batch.num_rows, np.int32)
    out = pa.table({"id": pc.cast(batch.column("id"), pa.string()), GROUP: group, "epoch": pa.array(epoch),
                    "n_tokens": pc.cast(batch.column("n_tokens"), pa.int64()), "tokens": batch.column("tokens")})
    return _place(out, epoch, plan["seed"], value, part["sets"])


def partition_counts(keys: pa.Table) -> pa.Table:
    """Per-batch docs and tokens per partition value (null: documents without one)."""
    return pl.from_arrow(keys.select(["part", "n_tokens"])).group_by("part").agg(
        pl.len().alias("docs"), pl.col("n_tokens").sum().alias("tok")).to_arrow()


def write_shard(rows: pa.Table, store_uri: str, shard_dir: str, names: dict, dtype_name: str) -> pa.Table:
    """map_groups UDF: every copy of one shard -> sorted by its shuffle key -> .bin/.idx (+ a
    .docs.parquet index: id, group, epoch, n_tokens per sequence). Returns one summary row."""
    from pipeline.megatron import write_indexed
    from pipeline.storage import Store

    shard = int(rows.column("_shard")[0].as_py())
    order = pc.sort_indices(rows, [("_key", "ascending"), ("id", "ascending"), ("epoch", "ascending")])
    rows = rows.take(order)
    tokens = rows.column("tokens").combine_chunks()
    flat = pc.list_flatten(tokens).to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False)
    store = Store(store_uri)
    prefix = f"{shard_dir}/{names[shard]}"
    write_indexed(store, prefix, flat, lengths, np.dtype(dtype_name))
    store.write_table(prefix + ".docs.parquet", rows.select(["id", GROUP, "epoch", "n_tokens"]))
    per_group = pl.from_arrow(rows.select([GROUP, "n_tokens"])).group_by(GROUP).agg(
        pl.len().alias("docs"), pl.col("n_tokens").sum().alias("tokens")).sort(GROUP)
    return pa.table({"shard": [shard], "docs": [rows.num_rows], "tokens": [int(lengths.sum())],
                     "groups": [json.dumps({r[0]: [int(r[1]), int(r[2])] for r in per_group.iter_rows()})]})


def write_shards(rows: pa.Table, *args) -> pa.Table:
    """Every shard of a small run in one task (same files as write_shard per group)."""
    if rows.num_rows == 0:
        return pa.table({"shard": pa.array([], pa.int64()), "docs": pa.array([], pa.int64()),
                         "tokens": pa.array([], pa.int64()), "groups": pa.array([], pa.string())})
    shards = rows.column("_shard").to_numpy()
    return pa.concat_tables([write_shard(rows.filter(pa.array(shards == k)), *args) for k in np.unique(shards)])


def annotate(batch: pa.Table, plan: dict) -> pa.Table:
    """The step's own rows: every input document once, with its group and the copies emitted
    over the whole schedule (`epochs`); documents never drawn carry drop_reason."""
    n_phases = len(plan["phases"])
    u = draw_order(batch.column("id"), plan["seed"])
    group = pc.cast(batch.column(plan["group_by"]), pa.string())
    groups = np.asarray(pc.fill_null(group, "\x00").to_pylist(), dtype=object)
    copies = cumulative_copies(u, groups, plan, n_phases - 1)
    out = batch.drop_columns([c for c in ("tokens",) if c in batch.column_names])
    out = set_column(set_column(out, GROUP, group), EPOCHS, pa.array(copies.astype(np.int32)))
    out = mark_dropped(out, pc.is_null(group), f"mixture:missing_{plan['group_by']}")
    return mark_dropped(out, pa.array(copies == 0), "mixture:not_sampled")


def safe_name(group: str) -> str:
    """A directory name for a group value from the data: never a path, never empty."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", group)[:48].strip("_")
    if clean != group or not clean:
        clean = f"{clean or 'group'}-{hashlib.sha256(group.encode()).hexdigest()[:8]}"
    return clean


# -- the operator --------------------------------------------------------------------------------
@register
class Mixture(Operator):
    """Realize a token mixture over groups and write megatron-core `.bin/.idx` shards.

    Rules:
    - Groups come from `group_by` (language, source, domain...); n_i = tokens available in group i
      (Ray aggregation). A document without a group is dropped (`mixture:missing_<col>`).
    - Weights: explicit `weights`; `temperature: T` gives p_i ~ n_i^(1/T); `unimax: {max_epochs: N}`
      follows UniMax (Chung et al. 2023, "UniMax: Fairer and More Effective Language Sampling"):
      groups from smallest to largest each get an even share of the budget still left, capped at
      N epochs of their own tokens. No method: natural proportions.
    - Budget `total_tokens` (default: all available). `max_epochs` caps every group over the whole
      schedule; a target above the cap is an error naming the group, its tokens and the cap, or,
      with `redistribute: true`, the surplus goes to the other groups (noted in the manifest).
    - Realization: group i gets R_i = target_i / n_i epochs: floor(R_i) whole epochs, then the
      documents first in a seeded draw order (hash of seed and id) until their tokens reach the
      fraction left (downsampling without replacement when R_i < 1). The draw-order cuts on
      either side of the target are found from two token histograms, exact to a document; which
      side each group takes is chosen by error diffusion over the groups of each side of a
      group_share (or boost), so a set's share lands on target even when its groups' documents
      are larger than their shares (`choose_cuts`). A group still more than 1% of the phase's
      tokens off its target (or a set's share, e.g. after a cap) gets a manifest note with the
      figures; phases with a group_share give `share_of` (target, after caps, realized).
    - `phases:` each with a share of the budget and its own method; the draw order runs on across
      phases, so caps hold per document over the schedule and nothing repeats within a phase
      before the whole group was used once in it. Each phase writes its own shard set
      (phase_NN/) and manifest; schedule.json lists the phases and their token ranges.
    - Shards: `per_group` (one set per group and the Megatron `--data-path` blend whose weights
      are the realized token shares: GPTDataset packs documents into fixed-length samples, so a
      per-sample weight is a token share, Megatron-LM #547) or `mixed` (all groups' copies
      shuffled together). One sequence per document; uint16 below 65,500 token ids, else int32.
      Shard = hash(seed, id, epoch) range, order within a shard = the same hash: written by the
      workers (tokens never pass through the driver), atomically, byte-identical for any number
      of workers. Shards go to `<output>/<step>.shards/` with manifest.json (tokenizer, sha256,
      dtype, BOS/EOS, per group docs/tokens available and emitted, epochs, target vs realized
      weight, every shard, the blend).
    - `partition_by: <column>` (Branch-Train-Merge, Li et al. 2022; c-BTM domains from `cluster`):
      besides the mixture (the pooled seed mix), every document with a group and a value of the
      column once in its value's own shard set, `<output>/<step>.partitions/<dir>/` (dir: the
      value made a safe name, never a path; the mapping in the listing), same writing path and
      shuffle hash, with its manifest (docs, tokens, per-group counts, shards, --data-path, the
      cluster's top terms when a `cluster` step wrote that column) and `partitions.json` listing
      them (and the documents without a value, counted). More than `max_partitions` values is an
      error (a wrong column); a column not in the data is an error naming it before the step works.
    - Rows returned: every input document once with `group` and `epochs` (copies emitted);
      documents never drawn carry `mixture:not_sampled`. Each shard's `.docs.parquet` gives every
      emitted sequence's id, group and epoch.
    """

    name = "mixture"
    kind = "global"
    Params = MixtureParams
    needs = frozenset({"id", "tokens", "n_tokens"})
    adds = frozenset({GROUP, EPOCHS})
    resources = Resources(num_cpus=1, batch_size=4096)

    def run(self, ds, ctx):
        from pipeline.megatron import dtype_for_vocab
        from pipeline.storage import Store

        from operators.tokenize import load_tokenizer

        p = self.params
        seed = p.seed if p.seed is not None else ctx.seed
        cols = ds.schema().names
        for what, col in (("group_by", p.group_by), ("partition_by", p.partition_by)):
            if col and col not in cols:
                raise MixtureError(f"mixture: {what} column {col!r} is not in the data "
                                   f"(columns: {', '.join(cols)})")
        _, tok_info = load_tokenizer(p.tokenizer)
        dtype = dtype_for_vocab(tok_info["vocab_size"])
        keys = ds.map_batches(doc_keys, fn_args=(p.group_by, seed, p.partition_by),
                              batch_format="pyarrow").materialize()
        h1 = _histogram(keys, None)  # per group and draw-order bucket: docs and tokens
        docs = {g: int(h[0].sum()) for g, h in h1.items()}
        available = {g: int(h[1].sum()) for g, h in h1.items() if h[1].sum() > 0}
        if not available:
            raise MixtureError("mixture: no documents with a group and tokens reached this step")
        total = float(p.total_tokens) if p.total_tokens else float(sum(available.values()))
        phases = plan_phases(available, p.phase_list(), total, p.max_epochs, p.redistribute)
        groups = sorted(available)
        # cumulative epochs per group at each phase end -> whole epochs + a draw threshold
        cum = {g: np.cumsum([ph["targets"][g] / available[g] for ph in phases]) for g in groups}
        cum = {g: np.round(v, 9) for g, v in cum.items()}
        wants = {g: {float(x - math.floor(x)) for x in cum[g] if x - math.floor(x) > 0} for g in groups}
        cuts = choose_cuts(phases, available, cum, cut_options(keys, available, wants, h1), p.max_epochs)
        plan = {"seed": seed, "group_by": p.group_by, "groups": cuts["groups"], "phases": []}
        for ph, wide in zip(phases, cuts["wide"]):
            ph["notes"] += [whole_document_note(ph, *w) for w in wide]
        store = Store(ctx.output_dir)
        root = f"{ctx.step_id}.shards"
        store.rmtree(root)  # a rerun replaces what an earlier (maybe killed) attempt left
        offset = 0
        for i, ph in enumerate(phases):
            sub = f"phase_{i:02d}/" if len(phases) > 1 else ""
            sets = {}
            if p.layout == "mixed":
                n = p.num_shards or max(1, math.ceil(ph["budget"] / p.shard_tokens))
                sets[MIXED] = {"n": n, "offset": offset, "dir": f"{sub}mixed"}
                offset += n
            else:
                for g in groups:
                    if ph["targets"][g] <= 0:
                        continue
                    n = max(1, math.ceil(ph["targets"][g] / p.shard_tokens))
                    sets[g] = {"n": n, "offset": offset, "dir": f"{sub}{safe_name(g)}"}
                    offset += n
            plan["phases"].append({"sets": sets})
        names = {}
        for ph_plan in plan["phases"]:
            names.update(shard_names(ph_plan["sets"]))
        if p.partition_by:
            plan["partition"] = plan_partitions(keys, p, offset)
            names.update(shard_names(plan["partition"]["sets"]))
        summaries = []
        for i in range(len(phases)):
            emitted = ds.map_batches(emit, fn_args=(plan, i), batch_format="pyarrow")
            summaries.append(_write_sets(emitted, phases[i]["budget"], plan["phases"][i]["sets"],
                                         (store.uri, root, names, dtype.name), ctx))
        if p.partition_by:
            part_root = f"{ctx.step_id}.partitions"
            store.rmtree(part_root)
            part = plan["partition"]
            emitted = ds.map_batches(emit_partitions, fn_args=(plan,), batch_format="pyarrow")
            written = _write_sets(emitted, sum(part["tokens"].values()), part["sets"],
                                  (store.uri, part_root, names, dtype.name), ctx)
            listing = write_partitions(store, part_root, part, written, names, p, seed, tok_info, dtype)
        manifests = []
        for i, ph in enumerate(phases):
            sub = f"phase_{i:02d}/" if len(phases) > 1 else ""
            man = phase_manifest(ph, summaries[i], names, docs, available, p, sub)
            if sub:
                store.write_json(f"{root}/{sub}manifest.json", man)
            manifests.append(man)
        top = top_manifest(manifests, phases, docs, available, p, seed, tok_info, dtype, total)
        if p.partition_by:
            top["partitions"] = {"by": p.partition_by, "root": f"../{part_root}", "listing": "partitions.json",
                                 "sets": [{k: v for k, v in e.items() if k != "top_terms"}
                                          for e in listing["partitions"]]}
        if len(phases) > 1:
            store.write_json(f"{root}/schedule.json", schedule(manifests, phases))
        store.write_json(f"{root}/manifest.json", top)  # written last: the shard set is complete
        return ds.map_batches(annotate, fn_args=(plan,), batch_format="pyarrow")

    def run_table(self, table: pa.Table, ctx) -> pa.Table:
        """run() on one table in one process (the engine's choice for a small input): the same
        plan, shards and rows, with every shard written by the one-task writer."""
        return self.run(LocalDataset(table), ctx).table


def shard_names(sets: dict) -> dict[int, str]:
    """{shard number: its path prefix} of every shard of the shard sets `sets`."""
    return {s["offset"] + k: f"{s['dir']}/part_{k:05d}" for s in sets.values() for k in range(s["n"])}


def shard_set_header(tok_info: dict, dtype) -> dict:
    """What every manifest of a shard set says of the format and the tokenizer."""
    tok = {k: tok_info.get(k) for k in ("name", "sha256", "vocab_size", "bos_id", "eos_id", "file")}
    return {"format": "megatron-core indexed dataset (MMIDIDX v1), one sequence per document",
            "tokenizer": tok, "dtype": np.dtype(dtype).name, "eos_id": tok_info.get("eos_id"),
            "bos_id": tok_info.get("bos_id")}


def _write_sets(emitted, tokens: float, sets: dict, args: tuple, ctx) -> list[dict]:
    """Write the copies `emitted` placed in `sets` as shards, on the workers; one summary row
    per shard written (shard, docs, tokens, groups), in shard order."""
    if tokens * 4 <= SMALL_BYTES or isinstance(emitted, LocalDataset):
        # small: one task writes every shard (a hash shuffle costs more than the data)
        written = emitted.repartition(1).map_batches(write_shards, fn_args=args, batch_format="pyarrow",
                                                     batch_size=None)
    else:
        n_part = min(sum(s["n"] for s in sets.values()), ctx.num_partitions())
        written = emitted.groupby("_shard", num_partitions=n_part).map_groups(
            write_shard, fn_args=args, batch_format="pyarrow")
    return sorted(written.take_all(), key=lambda r: r["shard"])


def plan_partitions(keys, p: MixtureParams, offset: int) -> dict:
    """partition_by: docs and tokens per value (a fold of per-batch partials: the driver holds
    one row per value), a directory per value (a safe name: values come from the data and never
    become paths), and shard numbers after the schedule's."""
    acc: dict = {}
    for b in keys.map_batches(partition_counts, batch_format="pyarrow", batch_size=None).iter_batches(
            batch_format="pyarrow", batch_size=None):
        for v, d, t in zip(*(b.column(c).to_pylist() for c in ("part", "docs", "tok"))):
            a = acc.setdefault(v, [0, 0])
            a[0] += d
            a[1] += t
            if len(acc) > p.max_partitions + 1:
                raise MixtureError(f"mixture: partition_by column {p.partition_by!r} has more than "
                                   f"{p.max_partitions} distinct values (one shard set each); is it the right "
                                   "column? (raise max_partitions if so)")
    missing = acc.pop(None, [0, 0])
    if not acc:
        raise MixtureError(f"mixture: partition_by column {p.partition_by!r} has no value in any document "
                           "that has a group")
    sets, dirs = {}, {}
    for v in sorted(acc):
        d = safe_name(v)
        if d in dirs:
            raise MixtureError(f"mixture: partition values {dirs[d]!r} and {v!r} map to the same directory {d!r}")
        dirs[d] = v
        n = max(1, math.ceil(acc[v][1] / p.shard_tokens))
        sets[v] = {"n": n, "offset": offset, "dir": d}
        offset += n
    return {"by": p.partition_by, "sets": sets, "docs": {v: a[0] for v, a in acc.items()},
            "tokens": {v: a[1] for v, a in acc.items()}, "docs_without_value": missing[0],
            "tokens_without_value": missing[1]}


def cluster_terms(store, column: str) -> tuple[str | None, dict]:
    """The top terms of the `cluster` step that wrote `column` (<output>/<step>.clusters.json),
    so a person can name a domain; (None, {}) when no cluster step did."""
    import posixpath

    for path in store.list("", ".clusters.json"):
        name = posixpath.basename(path)
        info = store.read_json(name)
        if info.get("column") == column:
            return name, info.get("top_terms", {})
    return None, {}


def write_partitions(store, part_root: str, part: dict, written: list[dict], names: dict, p: MixtureParams,
                     seed: int, tok_info: dict, dtype) -> dict:
    """One manifest per partition (read from what the workers wrote) and partitions.json."""
    terms_from, terms = cluster_terms(store, part["by"])
    header = shard_set_header(tok_info, dtype)
    by_set: dict[str, list[dict]] = {}
    for r in written:
        d, _, path = names[r["shard"]].partition("/")
        by_set.setdefault(d, []).append(dict(r, path=path))
    listing = []
    for v, s in part["sets"].items():
        shards, groups = [], {}
        for r in by_set.get(s["dir"], []):
            per = json.loads(r["groups"])
            shards.append({"path": r["path"], "docs": int(r["docs"]), "tokens": int(r["tokens"]),
                           "groups": {g: {"docs": x[0], "tokens": x[1]} for g, x in per.items()}})
            for g, (dd, t) in per.items():
                acc = groups.setdefault(g, {"docs": 0, "tokens": 0})
                acc["docs"] += dd
                acc["tokens"] += t
        docs, tokens = sum(x["docs"] for x in shards), sum(x["tokens"] for x in shards)
        if (docs, tokens) != (part["docs"][v], part["tokens"][v]):
            raise MixtureError(f"mixture: partition {v!r}: wrote {docs} documents / {tokens} tokens but "
                               f"counted {part['docs'][v]} / {part['tokens'][v]}")
        man = {**header, "partition_by": part["by"], "value": v, "dir": s["dir"],
               "seed": seed, "group_by": p.group_by, "layout": "partition", "docs": docs, "tokens": tokens,
               "groups": {g: groups[g] for g in sorted(groups)}, "shards": shards,
               "data_path": " ".join(x["path"] for x in shards)}
        if v in terms:
            man.update(top_terms=terms[v], terms_from=terms_from)
        store.write_json(f"{part_root}/{s['dir']}/manifest.json", man)
        listing.append({"value": v, "dir": s["dir"], "docs": docs, "tokens": tokens, "shards": len(shards),
                        **({"top_terms": terms[v]} if v in terms else {})})
    out = {"partition_by": part["by"], "group_by": p.group_by, "seed": seed, "dtype": header["dtype"],
           "tokenizer": header["tokenizer"], "partitions": listing, "docs_without_value": part["docs_without_value"],
           "tokens_without_value": part["tokens_without_value"],
           "note": "each partition holds every document with that value (and a group) once, shuffled by a hash "
                   "of (seed, id); the pooled seed mix is the step's own shard set (<step>.shards/)"}
    store.write_json(f"{part_root}/partitions.json", out)
    return out


def params_hash(p: MixtureParams, seed: int, tok_sha: str) -> str:
    blob = json.dumps({"params": p.model_dump(mode="json"), "seed": seed, "tokenizer": tok_sha}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def phase_manifest(ph: dict, summary: list[dict], names: dict, docs: dict, available: dict,
                   p: MixtureParams, sub: str = "") -> dict:
    """What one phase's shard sets hold, read from what the workers wrote."""
    shards, emitted_tok, emitted_docs = [], {}, {}
    for r in summary:
        per = json.loads(r["groups"])
        shards.append({"path": names[r["shard"]][len(sub):], "tokens": int(r["tokens"]), "docs": int(r["docs"]),
                       "groups": {g: {"docs": v[0], "tokens": v[1]} for g, v in per.items()}})
        for g, (d, t) in per.items():
            emitted_tok[g] = emitted_tok.get(g, 0) + t
            emitted_docs[g] = emitted_docs.get(g, 0) + d
    total = sum(emitted_tok.values()) or 1
    groups = {}
    for g in sorted(available):
        groups[g] = {"docs_available": docs[g], "tokens_available": available[g],
                     "tokens_target": round(ph["targets"].get(g, 0.0)), "tokens_emitted": emitted_tok.get(g, 0),
                     "docs_emitted": emitted_docs.get(g, 0),
                     "epochs": round(emitted_tok.get(g, 0) / available[g], 6),
                     "target_weight": round(ph["target_weights"].get(g, 0.0), 6),
                     "realized_weight": round(emitted_tok.get(g, 0) / total, 6)}
    notes = list(ph["notes"])
    share = None
    if ph.get("select"):
        sel = ph["select"]
        inside = [g for g in available if (g in sel["groups"]) != sel["exclude"]]
        planned = sum(ph["targets"].get(g, 0.0) for g in inside) / ph["budget"]
        realized = sum(emitted_tok.get(g, 0) for g in inside) / total
        share = {"groups": sel["groups"], "exclude": sel["exclude"], "target": sel["share"],
                 "after_caps": round(planned, 6), "realized": round(realized, 6)}
        if abs(realized - sel["share"]) > 0.01:
            why = ("epoch caps moved the plan (see the cap notes)" if abs(planned - sel["share"]) > 0.005 else
                   "documents are whole (see the per-group notes)")
            notes.append(f"{ph['name']}: the share of {'all but ' if sel['exclude'] else ''}{'/'.join(sel['groups'])} "
                         f"is {realized:.4f} for a target of {sel['share']:.4f} (after caps {planned:.4f}, "
                         f"{sum(emitted_tok.values()):,} tokens emitted): {why}")
    blend = []
    if p.layout == "per_group":
        for s in shards:
            blend.append([round(s["tokens"] / total, 8), s["path"]])
    # prefixes relative to the manifest's directory (the manifest does not depend on where the run
    # wrote); `gristmill shards DIR` prints them with DIR in front
    data_path = " ".join(f"{w} {pre}" for w, pre in blend) if blend else " ".join(s["path"] for s in shards)
    return {"phase": ph["name"], "method": ph["method"], "budget_tokens": round(ph["budget"]),
            "tokens_emitted": sum(emitted_tok.values()), "layout": p.layout, "groups": groups, "shards": shards,
            "blend": blend, "data_path": data_path, "notes": notes, **({"share_of": share} if share else {}),
            "blend_note": "weights are token shares of the realized data; Megatron's weights are per training "
                          "sample and GPTDataset packs documents into fixed-length samples, so a sample share "
                          "equals a token share (Megatron-LM #547)"}


def top_manifest(manifests: list[dict], phases: list[dict], docs, available, p, seed, tok_info, dtype,
                 total) -> dict:
    man = {**shard_set_header(tok_info, dtype), "group_by": p.group_by, "seed": seed, "layout": p.layout,
           "total_tokens_target": round(total), "max_epochs": p.max_epochs,
           "params_hash": params_hash(p, seed, tok_info["sha256"])}
    if len(manifests) == 1:
        man.update({k: v for k, v in manifests[0].items() if k != "phase"})
    else:
        man["phases"] = [{"dir": f"phase_{i:02d}", "name": m["phase"], "method": m["method"],
                          "tokens_emitted": m["tokens_emitted"], "data_path": m["data_path"]}
                         for i, m in enumerate(manifests)]
        emitted = {g: sum(m["groups"][g]["tokens_emitted"] for m in manifests) for g in available}
        man["groups"] = {g: {"docs_available": docs[g], "tokens_available": available[g],
                             "tokens_emitted": emitted[g], "epochs": round(emitted[g] / available[g], 6)}
                         for g in sorted(available)}
        man["tokens_emitted"] = sum(emitted.values())
        man["notes"] = [n for m in manifests for n in m["notes"]]
    return man


def schedule(manifests: list[dict], phases: list[dict]) -> dict:
    """Consecutive training stages: each phase's token range and its --data-path."""
    out, start = [], 0
    for i, m in enumerate(manifests):
        n = m["tokens_emitted"]
        out.append({"phase": i, "name": m["phase"], "dir": f"phase_{i:02d}", "method": m["method"],
                    "token_range": [start, start + n], "tokens": n, "data_path": m["data_path"],
                    "target_weights": {g: v["target_weight"] for g, v in m["groups"].items()},
                    "realized_weights": {g: v["realized_weight"] for g, v in m["groups"].items()}})
        start += n
    return {"phases": out, "total_tokens": start}
