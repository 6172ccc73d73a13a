"""Turns a workflow's step dependencies into series and parallel blocks, exactly.

Step Functions runs independent work at once only inside a Parallel state, which waits for
all of its branches. A dependency graph maps onto nested series and parallel blocks without
making any step wait for more than its dependencies exactly when the graph is
series-parallel (chains, forks, joins, diamonds and their nestings). Other shapes (an "N":
a step depending on only part of a parallel block) would need a step to wait on something it
does not depend on, so they are refused with the steps involved, rather than run in a more
serial order than declared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Series:
    """Blocks that run one after another."""

    parts: tuple[Plan, ...]


@dataclass(frozen=True)
class Branches:
    """Blocks that run at once; the block ends when every branch has."""

    branches: tuple[Plan, ...]


# A step name, or a block of them.
Plan = str | Series | Branches


def plan(dependencies: Mapping[str, Sequence[str]]) -> Plan:
    """The execution plan of steps {name: names it depends on}, in declaration order.

    Raises ValueError for an empty workflow, unknown or cyclic dependencies, and graphs that
    are not series-parallel.
    """
    if not dependencies:
        raise ValueError("a workflow needs at least one step")
    for name, needs in dependencies.items():
        unknown = sorted(set(needs) - set(dependencies))
        if unknown:
            raise ValueError(f"step {name!r} depends on unknown {unknown}")
    order = _topological_order(dependencies)
    ancestors: dict[str, frozenset[str]] = {}
    for name in order:
        ancestors[name] = frozenset(
            {*dependencies[name], *(a for need in dependencies[name] for a in ancestors[need])}
        )
    return _decompose(order, dependencies, ancestors)


def _topological_order(dependencies: Mapping[str, Sequence[str]]) -> list[str]:
    ordered: list[str] = []
    done: set[str] = set()
    while len(ordered) < len(dependencies):
        ready = [n for n, needs in dependencies.items() if n not in done and set(needs) <= done]
        if not ready:
            stuck = sorted(set(dependencies) - done)
            raise ValueError(f"step dependencies form a cycle among {stuck}")
        ordered += ready
        done.update(ready)
    return ordered


def _decompose(
    nodes: list[str],
    dependencies: Mapping[str, Sequence[str]],
    ancestors: Mapping[str, frozenset[str]],
) -> Plan:
    if len(nodes) == 1:
        return nodes[0]
    components = _components(nodes, dependencies)
    if len(components) > 1:
        return Branches(tuple(_decompose(c, dependencies, ancestors) for c in components))
    # A series cut: every later step descends from every earlier one. Such a head precedes
    # the tail in any topological order, so trying each prefix of one order finds it.
    for cut in range(1, len(nodes)):
        head, tail = nodes[:cut], nodes[cut:]
        if all(set(head) <= ancestors[step] for step in tail):
            return _series(
                _decompose(head, dependencies, ancestors),
                _decompose(tail, dependencies, ancestors),
            )
    raise ValueError(
        f"steps {nodes} do not split into series and parallel blocks: a step depends on part "
        "of a parallel block but not all of it; add the missing dependency or split the workflow"
    )


def _components(nodes: list[str], dependencies: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Groups of `nodes` linked by dependencies among themselves, each in the given order."""
    group = {name: name for name in nodes}

    def root(name: str) -> str:
        while group[name] != name:
            name = group[name]
        return name

    for name in nodes:
        for need in dependencies[name]:
            if need in group:
                group[root(need)] = root(name)
    components: dict[str, list[str]] = {}
    for name in nodes:
        components.setdefault(root(name), []).append(name)
    return list(components.values())


def _series(first: Plan, second: Plan) -> Series:
    parts: list[Plan] = []
    for block in (first, second):
        parts += block.parts if isinstance(block, Series) else [block]
    return Series(tuple(parts))
