"""A torch.compile backend for CPU tests of what the engine's compiled parts trace."""

from __future__ import annotations


class GraphRecorder:
    """Runs the traced graph eagerly and keeps the names of what it calls."""

    def __init__(self):
        self.targets: list[str] = []

    def __call__(self, gm, example_inputs):
        self.targets += [str(node.target) for node in gm.graph.nodes if node.op in ("call_function", "call_method")]
        return gm.forward
