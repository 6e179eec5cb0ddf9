"""A pass that removes Identity nodes (a graph input or output name is never renamed)."""

from __future__ import annotations

from pathlib import Path

from accelserve.artifact import ModelArtifact
from accelserve.onnx_io import check_model, save_onnx
from accelserve.passes.base import Pass, PassConfig, PassContext


class StripIdentityConfig(PassConfig):
    keep_graph_outputs: bool = True  #: an Identity that produces a graph output stays (its name is the API)


class StripIdentity(Pass[StripIdentityConfig]):
    name = "strip-identity"
    config_class = StripIdentityConfig

    def run(self, model: ModelArtifact, output: Path, context: PassContext) -> ModelArtifact:
        proto = model.load()
        graph = proto.graph
        graph_outputs = {o.name for o in graph.output}
        removed = 0
        for node in list(graph.node):
            if node.op_type != "Identity" or (self.config.keep_graph_outputs and node.output[0] in graph_outputs):
                continue
            src, dst = node.input[0], node.output[0]
            for other in graph.node:
                for i, name in enumerate(other.input):
                    if name == dst:
                        other.input[i] = src
            graph.node.remove(node)
            removed += 1
        check_model(proto, what=f"{self.name} output")
        save_onnx(proto, output)
        context.report[self.name] = {"removed_identity_nodes": removed}
        context.log.append(f"{self.name}: removed {removed} Identity node(s)")
        return model.derive(output, self.name)
