"""The ONNX reference implementation of one operator, for the golden models' tests."""

from onnx import helper
from onnx.reference import ReferenceEvaluator

__all__ = ["onnx_run"]


def onnx_run(op, inputs, out_type, out_shape=None, **attrs):
    """Output ``y`` of the ONNX (opset 21) operator ``op`` with attributes ``attrs`` on
    ``inputs`` (name → NumPy array, in the operator's input order), computed by
    ``onnx.reference``; ``out_type`` is its ``TensorProto`` element type."""
    node = helper.make_node(op, list(inputs), ["y"], **attrs)
    graph = helper.make_graph(
        [node], op,
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for name, v in inputs.items()],
        [helper.make_tensor_value_info("y", out_type, out_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return ReferenceEvaluator(model).run(None, inputs)[0]
