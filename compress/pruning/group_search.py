"""A bound on Torch-Pruning's group search, so that a pruning pass on any model cuts or refuses, never spins.

Torch-Pruning finds a group by walking its dependency graph from the group's root layer
(``DependencyGraph.get_pruning_group``, its ``_fix_dependency_graph_non_recursive``); each step of the
walk adds one (dependency, channel indices) pair to the group, and a node is walked again whenever
it is reached with indices the group does not hold yet. On a healthy graph that is about once per
node; on Phi3 and Falcon (fused projections) and a Llama with head pruning that walk, called from the
plan check, printed nothing for 10 minutes (the issue's report, before plan_check left fused layers
whole; not reproduced since). Here every step is counted: a search that takes more than
``STEPS_PER_NODE`` steps per node of the graph stops, naming its root layer and the slow step, and the
pass records the work done (searches, steps, the worst steps per node) for its tests and report. The
bound scales with the model (its graph's size), never with the clock.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch_pruning as tp
from torch_pruning.dependency.group import Group

from compress.pruning.steps import GroupCutError

# Steps per graph node one group search may take: the zoo's worst healthy search takes 1.87
# (nn.TransformerEncoder's fused in_proj, its slices reached once more), so 16 is room, not a squeeze.
STEPS_PER_NODE = 16
SLOW_STEP = "Torch-Pruning's group search (DependencyGraph.get_pruning_group)"


class GroupSearchTooLong(GroupCutError):
    """One group search passed its bound; ``module`` is the group's root."""

    def __init__(self, module: torch.nn.Module, name: str, steps: int, nodes: int):
        self.name = name  # in the model the graph was built on (the plan check's copy names alike)
        bound = f"{STEPS_PER_NODE} per node of a {nodes}-node graph"
        super().__init__(module, RuntimeError(f"{SLOW_STEP} took over {steps} steps ({bound})"))


@dataclass
class Work:
    """What the group searches of one pass did."""

    searches: int = 0
    steps: int = 0
    worst_steps_per_node: float = 0.0
    largest_graph: int = 0  # nodes

    def record(self) -> dict:
        return {**asdict(self), "worst_steps_per_node": round(self.worst_steps_per_node, 3), "bound": STEPS_PER_NODE}


@contextlib.contextmanager
def bounded() -> Iterator[Work]:
    """Within this block every Torch-Pruning group search is counted and bounded (see the module)."""
    work = Work()
    search = {"limit": None, "steps": 0, "root": None, "name": "", "nodes": 0}
    get_group, add_dep = tp.DependencyGraph.get_pruning_group, Group.add_dep

    def get_pruning_group(graph, module, pruning_fn, idxs):
        if search["limit"] is not None:  # a search inside a search (none today): the outer bound holds
            return get_group(graph, module, pruning_fn, idxs)
        nodes = max(len(graph.module2node), 1)
        name = getattr(graph, "_module2name", {}).get(module, type(module).__name__)
        search.update(limit=int(STEPS_PER_NODE * nodes), steps=0, root=module, name=name, nodes=nodes)
        try:
            return get_group(graph, module, pruning_fn, idxs)
        finally:
            work.searches += 1
            work.steps += search["steps"]
            work.worst_steps_per_node = max(work.worst_steps_per_node, search["steps"] / nodes)
            work.largest_graph = max(work.largest_graph, nodes)
            search["limit"] = None

    def counted_add_dep(group, dep, idxs):
        if search["limit"] is not None:
            search["steps"] += 1
            if search["steps"] > search["limit"]:
                raise GroupSearchTooLong(search["root"], search["name"], search["limit"], search["nodes"])
        return add_dep(group, dep, idxs)

    tp.DependencyGraph.get_pruning_group, Group.add_dep = get_pruning_group, counted_add_dep
    try:
        yield work
    finally:
        tp.DependencyGraph.get_pruning_group, Group.add_dep = get_group, add_dep
