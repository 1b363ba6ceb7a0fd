"""The step graph. Linear by default: a step reads the step before it. `input:` names other
step ids: one id is a branch, a list is a union (join) of their outputs."""
from __future__ import annotations

from typing import Protocol, Sequence

SOURCE = "read"  # pseudo step id of the input reader (its quarantined rows land in rejected/read/)


class _Step(Protocol):
    id: str
    inputs: list[str]


def inputs_of(steps: Sequence[_Step], step_id: str) -> list[str]:
    """Explicit `input:`, else the previous step, else the reader."""
    i = next(k for k, s in enumerate(steps) if s.id == step_id)
    if steps[i].inputs:
        return list(steps[i].inputs)
    return [steps[i - 1].id] if i > 0 else [SOURCE]


def consumers(steps: Sequence[_Step], step_id: str) -> list[str]:
    return [s.id for s in steps if step_id in inputs_of(steps, s.id)]


def find_cycle(steps: Sequence[_Step]) -> list[str] | None:
    """A cycle as [a, b, ..., a] in data-flow order, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str):
        state[n] = 1
        stack.append(n)
        for d in inputs_of(steps, n):
            if d == SOURCE:
                continue
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for s in steps:
        if s.id not in state:
            found = visit(s.id)
            if found:
                return list(reversed(found))
    return None


def topo_order(steps: Sequence[_Step]) -> list[str]:
    """Steps in an order where every step comes after its inputs (recipe order breaks ties)."""
    done: list[str] = []
    seen: set[str] = set()

    def visit(n: str):
        if n in seen or n == SOURCE:
            return
        seen.add(n)
        for d in inputs_of(steps, n):
            visit(d)
        done.append(n)

    for s in steps:
        visit(s.id)
    return done


def materialized(steps: Sequence[_Step], kinds: dict[str, str]) -> set[str]:
    """Steps whose output is written to <output>/<step>/: global steps (barriers), sinks (no
    consumer), fan-out points (read by several steps, so computed once) and steps the recipe
    marks `write: true` (to inspect what they kept)."""
    out = set()
    for s in steps:
        n = len(consumers(steps, s.id))
        if kinds[s.id] == "global" or n != 1 or getattr(s, "write", False):
            out.add(s.id)
    return out
