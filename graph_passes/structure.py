"""What a feature map is used for, read from the graph's structure (the candidate rule's rules 4 and 5,
graph_passes/candidates.py): whether a tensor only feeds attention (a q/k/v projection), and whether it is the
output image itself.

Attention is told by what consumes a tensor, not by node names: an *attention product* is a MatMul (or Einsum)
of two tensors computed from the image (not a weight, as a Linear layer's is) whose result reaches a Softmax
within a few hops (q @ k^T), or one of whose inputs comes from a Softmax within a few hops (softmax(.) @ v). A
tensor is an *attention input* when every path from it reaches an attention product within ATTENTION_HOPS hops
through ops that only reshape, split, scale or normalise it (or a depthwise convolution: the q/k/v projections
of Restormer-style channel attention are a 1x1 conv then a 3x3 depthwise one). A trunk feature has some other
use (a residual sum, a full convolution, the graph output), so it is never one.
"""
from __future__ import annotations

import onnx

# ops a q/k/v tensor goes through on its way to the attention product: heads split, layout, scale, normalise
ATTENTION_PATH_OPS = {"Reshape", "Transpose", "Split", "Slice", "Gather", "Squeeze", "Unsqueeze", "Flatten",
                      "Identity", "Cast", "Mul", "Div", "Add", "Sub", "Sqrt", "Pow", "ReduceL2", "ReduceSumSquare",
                      "ReduceMean", "ReduceSum", "Clip", "Max", "Expand", "LayerNormalization", "Dropout", "Abs"}
# OmniSR's k: dwconv -> Slice, Reshape, Transpose, Reshape, ReduceL2, Clip, Expand, Div, Transpose -> MatMul
ATTENTION_HOPS = 10
SOFTMAX_HOPS = 4  # between the product and its Softmax: scale, bias/mask, reshape
# ops that leave the image an image (the candidate rule's rule 5: the node producing the output image)
IMAGE_PATH_OPS = {"Add", "Sub", "Mul", "Div", "Clip", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh",
                  "HardSigmoid", "Min", "Max", "Identity", "Cast", "Resize", "Upsample", "Slice", "Neg", "Abs",
                  "Round", "Floor", "Ceil"}
SIZE_OPS = {"Shape", "Size"}  # their consumers read only the size


class GraphUses:
    """Who consumes and who produces each tensor of a graph, and the questions asked of them."""

    def __init__(self, model: onnx.ModelProto, reached: set[str]):
        self.reached = reached  # tensors computed from the image input
        self.producer = {o: n for n in model.graph.node for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for n in model.graph.node:
            for i in set(n.input):
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in model.graph.output}
        self.weights = {i.name: i for i in model.graph.initializer}
        self._attention_input: dict[tuple, bool] = {}

    def _uses(self, tensor: str) -> list:
        return [n for n in self.consumers.get(tensor, []) if n.op_type not in SIZE_OPS]

    def _softmax_after(self, tensor: str, hops: int) -> bool:
        for n in self._uses(tensor):
            if n.op_type == "Softmax":
                return True
            if hops > 0 and n.op_type in ATTENTION_PATH_OPS and any(self._softmax_after(o, hops - 1) for o in n.output):
                return True
        return False

    def _softmax_before(self, tensor: str, hops: int) -> bool:
        n = self.producer.get(tensor)
        if n is None:
            return False
        if n.op_type == "Softmax":
            return True
        return hops > 0 and n.op_type in ATTENTION_PATH_OPS and any(
            self._softmax_before(i, hops - 1) for i in n.input if i in self.reached)

    def attention_product(self, node: onnx.NodeProto) -> bool:
        """A MatMul/Einsum of two image-computed tensors next to a Softmax: q @ k^T or softmax(.) @ v."""
        if node.op_type not in ("MatMul", "Einsum"):
            return False
        ins = [i for i in node.input if i]
        if len(ins) < 2 or not all(i in self.reached for i in ins):
            return False
        return (self._softmax_after(node.output[0], SOFTMAX_HOPS)
                or any(self._softmax_before(i, SOFTMAX_HOPS) for i in ins))

    def _depthwise(self, node: onnx.NodeProto) -> bool:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in self.weights:
            return False
        dims = self.weights[node.input[1]].dims
        return len(dims) == 4 and dims[1] == 1  # [C_out, C_in / group, kh, kw] with one input channel per group

    def attention_input(self, tensor: str, hops: int = ATTENTION_HOPS) -> bool:
        """Every use of `tensor` reaches an attention product within `hops` reshape/scale/normalise steps."""
        key = (tensor, hops)
        if key not in self._attention_input:
            self._attention_input[key] = False  # cycles cannot occur in ONNX; this only guards the memo
            uses = self._uses(tensor)
            ok = bool(uses) and tensor not in self.outputs
            for n in uses:
                if not ok:
                    break
                if self.attention_product(n):
                    continue
                passes = n.op_type in ATTENTION_PATH_OPS or self._depthwise(n)
                outs = [o for o in n.output if o]
                ok = passes and hops > 0 and bool(outs) and all(self.attention_input(o, hops - 1) for o in outs)
            self._attention_input[key] = ok
        return self._attention_input[key]

    def image_output(self, tensor: str, image_outputs: set[str]) -> str | None:
        """The image output `tensor` becomes through elementwise/resize/crop ops only (itself included), or None."""
        todo, seen = [tensor], set()
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in image_outputs:
                return t
            for n in self._uses(t):
                if n.op_type in IMAGE_PATH_OPS:
                    todo.extend(o for o in n.output if o)
        return None
