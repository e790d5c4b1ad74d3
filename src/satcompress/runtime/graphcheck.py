"""Check a ``.satc`` graph skeleton against the manifest's tensors, without importing onnx.

The skeleton is the ONNX model with its initializers removed; the manifest lists them. Before
the rebuilt model reaches ONNX Runtime, :func:`check_graph` makes sure the two fit:

* the skeleton is a well-formed ONNX protobuf with an input and an output, and holds no
  initializers of its own (the writer removes them all);
* no tensor name is also a graph input or a node's output, and every input a node of the
  main graph reads is defined (a graph input, a manifest tensor or a node's output): a
  tensor deleted from the manifest is named here, not by ONNX Runtime;
* each tensor's dtype fits the nodes that read it: element types are followed through the
  graph for the standard operators of :data:`_RULES` (inputs that share one type, inputs of
  a fixed type such as ``Reshape``'s int64 shape, ``QuantizeLinear``/``DequantizeLinear``
  scales and zero points); a ``double`` tensor feeding a ``float`` ``Sub`` is refused.
  Operators outside the table (other domains, control flow) are left to ONNX Runtime,
  whose refusal :class:`satcompress.runtime.Runtime` also reports as an ``ArtifactError``.

The reader is a minimal protobuf wire-format parser for the few ONNX fields needed (field
numbers from ``onnx/onnx.proto``): ``import onnx`` costs about a second on a small CPU,
which the device's cold start avoids (see :meth:`satcompress.runtime.satc.Artifact.onnx_bytes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from satcompress.runtime.errors import ManifestError
from satcompress.runtime.schema import DTYPES

__all__ = ["GraphError", "check_graph"]

# ONNX TensorProto.DataType codes
FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64, BOOL = 1, 2, 3, 4, 5, 6, 7, 9
FLOAT16, DOUBLE, BFLOAT16 = 10, 11, 16
_FLOATS = frozenset({FLOAT, FLOAT16, DOUBLE, BFLOAT16})
_INDEX = frozenset({INT32, INT64})
_I64 = frozenset({INT64})
_LOW_INTS = frozenset({UINT8, INT8, UINT16, INT16, *range(17, 21), 21, 22})  # + float8, int4
_INT8S = frozenset({UINT8, INT8})
_NAMES = {code: name for name, (code, _) in DTYPES.items()} | {16: "bfloat16"}


class GraphError(ManifestError):
    """The graph skeleton is malformed, or disagrees with the manifest's tensors."""


class _Rule(NamedTuple):
    """How an operator types its inputs and its first output.

    Attributes:
        groups: Input positions that share one type (None: all inputs); the first group
            also gives the output's type when ``output`` is ``"group"``.
        fixed: Allowed types by input position.
        output: Type of output 0: a type code, ``"group"`` (the first group's) or None.
    """

    groups: tuple[tuple[int, ...] | None, ...] = ()
    fixed: Mapping[int, frozenset[int]] = {}
    output: int | str | None = "group"


_UNARY = (
    "Relu Sigmoid Tanh Erf Sqrt Exp Log Abs Neg Softmax LogSoftmax Gelu HardSigmoid HardSwish "
    "LeakyRelu Elu Selu Identity Flatten Transpose GlobalAveragePool GlobalMaxPool "
    "AveragePool MaxPool Reciprocal Floor Ceil Round Sign Softplus Mish DepthToSpace "
    "SpaceToDepth LRN"
).split()
_REDUCE = "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL2".split()
_COMPARE = "Equal Less Greater LessOrEqual GreaterOrEqual".split()
#: The standard (``ai.onnx``) operators whose typing is checked; see :class:`_Rule`.
_RULES: dict[str, _Rule] = {
    **{op: _Rule((None,)) for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Mean", "Sum")},
    "Concat": _Rule((None,)),
    **{op: _Rule(((0,),)) for op in _UNARY},
    **{op: _Rule(((0,),), {1: _I64}) for op in _REDUCE},
    **{op: _Rule((None,), output=BOOL) for op in _COMPARE},
    "Clip": _Rule(((0, 1, 2),)),
    "Where": _Rule(((1, 2),), {0: frozenset({BOOL})}),
    "Reshape": _Rule(((0,),), {1: _I64}),
    "Expand": _Rule(((0,),), {1: _I64}),
    "Tile": _Rule(((0,),), {1: _I64}),
    "Unsqueeze": _Rule(((0,),), {1: _I64}),
    "Squeeze": _Rule(((0,),), {1: _I64}),
    "Split": _Rule(((0,),), {1: _I64}),
    "Slice": _Rule(((0,),), {1: _INDEX, 2: _INDEX, 3: _INDEX, 4: _INDEX}),
    "Gather": _Rule(((0,),), {1: _INDEX}),
    "Pad": _Rule(((0, 2),), {1: _I64, 3: _INDEX}),
    "Resize": _Rule(((0,),), {1: _FLOATS, 2: frozenset({FLOAT}), 3: _I64}),
    "Conv": _Rule(((0, 1, 2),), {0: _FLOATS, 1: _FLOATS, 2: _FLOATS}),
    "ConvTranspose": _Rule(((0, 1, 2),), {0: _FLOATS, 1: _FLOATS, 2: _FLOATS}),
    "Gemm": _Rule(((0, 1, 2),)),
    "MatMul": _Rule(((0, 1),)),
    "PRelu": _Rule(((0, 1),)),
    "Pow": _Rule(((0,),)),
    "LayerNormalization": _Rule(((0, 1, 2),), {0: _FLOATS}),
    "InstanceNormalization": _Rule(((0, 1, 2),), {0: _FLOATS}),
    "BatchNormalization": _Rule(((0,),), dict.fromkeys(range(5), _FLOATS)),
    "Dropout": _Rule(((0,),), {1: _FLOATS, 2: frozenset({BOOL})}),
    "Cast": _Rule(output=None),  # the type: its "to" attribute
    "CastLike": _Rule(output=None),  # the type of its input 1
    "Constant": _Rule(output=None),  # the type: its value attribute
    "Shape": _Rule(output=INT64),
    "Size": _Rule(output=INT64),
    "ArgMax": _Rule(output=INT64),
    "ArgMin": _Rule(output=INT64),
    "NonZero": _Rule(output=INT64),
    "ConstantOfShape": _Rule(fixed={0: _I64}, output=None),  # the type: its value attribute
    "QuantizeLinear": _Rule(
        fixed={0: _FLOATS | {INT32}, 1: _FLOATS | {INT32}, 2: _LOW_INTS}, output=None
    ),
    "DequantizeLinear": _Rule(
        ((0, 2),), {0: _LOW_INTS | {INT32}, 1: _FLOATS}, output=None
    ),  # fmt: skip
    "DynamicQuantizeLinear": _Rule(fixed={0: _FLOATS}, output=UINT8),
    "MatMulInteger": _Rule(((0, 2), (1, 3)), dict.fromkeys(range(4), _INT8S), output=INT32),
    "ConvInteger": _Rule(((0, 2), (1, 3)), dict.fromkeys(range(4), _INT8S), output=INT32),
}


@dataclasses.dataclass
class _Node:
    op: str = ""
    domain: str = ""
    name: str = ""
    inputs: list[str] = dataclasses.field(default_factory=list)
    outputs: list[str] = dataclasses.field(default_factory=list)
    attrs: dict[str, int] = dataclasses.field(default_factory=dict)  # to, value, output_dtype


@dataclasses.dataclass
class _Graph:
    nodes: list[_Node] = dataclasses.field(default_factory=list)
    inputs: dict[str, int | None] = dataclasses.field(default_factory=dict)  # name -> type
    outputs: list[str] = dataclasses.field(default_factory=list)
    initializers: list[str] = dataclasses.field(default_factory=list)
    sparse_initializers: list[str] = dataclasses.field(default_factory=list)


def check_graph(skeleton: bytes, tensors: Sequence[Mapping[str, Any]]) -> None:
    """Check the ONNX graph skeleton against the manifest's (already checked) tensors.

    Args:
        skeleton: The decompressed skeleton (a serialised ``ModelProto``).
        tensors: The manifest's tensor entries.

    Raises:
        GraphError: Naming the tensor or the node that does not fit (an ``ArtifactError``).
    """
    graph = _parse_model(memoryview(skeleton))
    index = {t["name"]: i for i, t in enumerate(tensors)}
    _check_names(graph, index)
    types: dict[str, int | None] = dict(graph.inputs)
    types.update({t["name"]: DTYPES[t["dtype"]][0] for t in tensors})
    for node in graph.nodes:
        _check_types(node, types, index, tensors)


def _check_names(graph: _Graph, index: Mapping[str, int]) -> None:
    if graph.initializers:
        raise GraphError(
            f"graph skeleton: holds initializer {graph.initializers[0]!r}; the manifest must "
            "list every tensor"
        )
    if not graph.outputs or not [n for n in graph.inputs if n not in index]:
        raise GraphError("graph skeleton: the model needs an input and an output")
    produced: dict[str, str] = {}
    for node in graph.nodes:
        for name in node.outputs:
            if not name:
                continue
            clash = _defined_twice(name, produced, graph.inputs, index)
            if clash:
                raise GraphError(f"{clash}: {name!r} is also an output of node {node.name!r}")
            produced[name] = node.name
    defined = set(graph.inputs) | set(index) | set(graph.sparse_initializers) | set(produced)
    for node in graph.nodes:
        for name in node.inputs:
            if name and name not in defined:
                raise GraphError(
                    f"manifest.tensors: no tensor {name!r}, which node {node.name!r} "
                    f"({node.op}) reads, and the graph does not compute it"
                )
    for name in graph.outputs:
        if name not in defined:
            raise GraphError(f"graph skeleton: output {name!r} is never computed")


def _defined_twice(
    name: str, produced: Mapping[str, str], inputs: Mapping[str, Any], index: Mapping[str, int]
) -> str | None:
    if name in index:
        return f"manifest.tensors[{index[name]}].name"
    if name in produced:
        return f"graph skeleton: node {produced[name]!r}"
    if name in inputs:
        return "graph skeleton: a graph input"
    return None


def _check_types(
    node: _Node,
    types: dict[str, int | None],
    index: Mapping[str, int],
    tensors: Sequence[Mapping[str, Any]],
) -> None:
    """Check one node's input types and record its first output's type."""
    rule = _RULES.get(node.op) if node.domain in ("", "ai.onnx") else None
    if rule is None:
        return
    known = {p: types.get(n) for p, n in enumerate(node.inputs) if n and types.get(n)}
    for position, allowed in rule.fixed.items():
        if position in known and known[position] not in allowed:
            wanted = ", ".join(sorted(_NAMES.get(t, str(t)) for t in allowed if t in _NAMES))
            _refuse(node, [position], known, index, tensors, f"takes {wanted} there")
    shared = []
    for group in rule.groups:
        positions = range(len(node.inputs)) if group is None else group
        found = {p: known[p] for p in positions if p in known}
        if len(set(found.values())) > 1:
            _refuse(node, list(found), known, index, tensors, "takes one type for them")
        shared.append(next(iter(found.values()), None))
    if node.outputs and node.outputs[0]:
        types[node.outputs[0]] = _output_type(node, rule, shared, known)


def _output_type(
    node: _Node, rule: _Rule, shared: list[int | None], known: Mapping[int, int]
) -> int | None:
    if node.op == "QuantizeLinear":
        return known.get(2) or node.attrs.get("output_dtype") or UINT8
    if node.op == "DequantizeLinear":
        return known.get(1)
    if node.op == "Cast":
        return node.attrs.get("to")
    if node.op == "CastLike":
        return known.get(1)
    if node.op in ("Constant", "ConstantOfShape"):
        return node.attrs.get("value", FLOAT if node.op == "ConstantOfShape" else None)
    if rule.output == "group":
        return shared[0] if shared else None
    return rule.output if isinstance(rule.output, int) else None


def _refuse(
    node: _Node,
    positions: list[int],
    known: Mapping[int, int],
    index: Mapping[str, int],
    tensors: Sequence[Mapping[str, Any]],
    rule: str,
) -> None:
    """Raise the error of a type conflict, naming the manifest tensor at fault if any.

    Among inputs that must share a type, the odd one out is at fault: a tensor whose type
    differs from the most common one (a tensor of the wrong type otherwise).
    """
    seen = ", ".join(
        f"input {p} {node.inputs[p]!r} is {_NAMES.get(known[p], known[p])}" for p in positions
    )
    text = f"node {node.name!r} ({node.op}) {rule}: {seen}"
    values = [known[p] for p in positions]
    common = max(values, key=values.count) if len(positions) > 1 else None
    ours = [p for p in positions if node.inputs[p] in index]
    for p in sorted(ours, key=lambda p: known[p] == common):
        i = index[node.inputs[p]]
        raise GraphError(f"manifest.tensors[{i}].dtype: {tensors[i]['dtype']!r} does not fit "
                         f"the graph; {text}")  # fmt: skip
    raise GraphError(f"graph skeleton: {text}")


# --- protobuf wire format (https://protobuf.dev/programming-guides/encoding/) ---


def _parse_model(data: memoryview) -> _Graph:
    graph = _Graph()
    for field, value in _fields(data, "model"):
        if field == 7:  # ModelProto.graph (repeated occurrences merge)
            _parse_graph(_bytes(value), graph)
    return graph


def _parse_graph(data: memoryview, graph: _Graph) -> None:
    for field, value in _fields(data, "graph"):
        if field == 1:
            graph.nodes.append(_parse_node(_bytes(value)))
        elif field == 5:
            graph.initializers.append(_tensor_name(_bytes(value)))
        elif field == 15:  # SparseTensorProto: its values tensor holds the name
            for sub, inner in _fields(_bytes(value), "sparse initializer"):
                if sub == 1:
                    graph.sparse_initializers.append(_tensor_name(_bytes(inner)))
        elif field == 11:
            name, elem = _value_info(_bytes(value))
            graph.inputs[name] = elem
        elif field == 12:
            graph.outputs.append(_value_info(_bytes(value))[0])


def _parse_node(data: memoryview) -> _Node:
    node = _Node()
    for field, value in _fields(data, "node"):
        if field == 1:
            node.inputs.append(_text(value))
        elif field == 2:
            node.outputs.append(_text(value))
        elif field == 3:
            node.name = _text(value)
        elif field == 4:
            node.op = _text(value)
        elif field == 7:
            node.domain = _text(value)
        elif field == 5:
            _parse_attribute(_bytes(value), node)
    return node


def _parse_attribute(data: memoryview, node: _Node) -> None:
    name, number, tensor_type = "", None, None
    for field, value in _fields(data, "attribute"):
        if field == 1:
            name = _text(value)
        elif field == 3:
            number = _signed(_int(value))
        elif field == 5:  # t: a TensorProto
            tensor_type = _tensor_type(_bytes(value))
        elif field in (2, 7):  # f / floats: value_float(s) of a Constant
            tensor_type = FLOAT
        elif field == 8:  # ints: value_ints of a Constant
            tensor_type = INT64
    if name in ("to", "output_dtype") and number is not None:
        node.attrs[name] = number
    elif name.startswith("value") and (tensor_type is not None or number is not None):
        node.attrs["value"] = tensor_type if tensor_type is not None else INT64


def _value_info(data: memoryview) -> tuple[str, int | None]:
    name, elem = "", None
    for field, value in _fields(data, "value info"):
        if field == 1:
            name = _text(value)
        elif field == 2:  # TypeProto
            for sub, tensor in _fields(_bytes(value), "type"):
                if sub == 1:  # tensor_type
                    for key, inner in _fields(_bytes(tensor), "tensor type"):
                        if key == 1:
                            elem = _int(inner)
    return name, elem


def _tensor_name(data: memoryview) -> str:
    return next((_text(v) for f, v in _fields(data, "tensor") if f == 8), "")


def _tensor_type(data: memoryview) -> int | None:
    return next((_int(v) for f, v in _fields(data, "tensor") if f == 2), None)


def _fields(data: memoryview, what: str) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of each field of a message: an int, or the bytes of a LEN field."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos, what)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise GraphError(f"graph skeleton: malformed {what} (field 0)")
        if wire == 0:
            value, pos = _varint(data, pos, what)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = int.from_bytes(data[pos : pos + size], "little"), pos + size
        elif wire == 2:
            size, pos = _varint(data, pos, what)
            value, pos = data[pos : pos + size], pos + size
        else:
            raise GraphError(f"graph skeleton: malformed {what} (wire type {wire})")
        if pos > end:
            raise GraphError(f"graph skeleton: malformed {what} (truncated field {field})")
        yield field, value


def _varint(data: memoryview, pos: int, what: str) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            break
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise GraphError(f"graph skeleton: malformed {what} (bad varint)")


def _bytes(value: int | memoryview) -> memoryview:
    if not isinstance(value, memoryview):
        raise GraphError("graph skeleton: a message field holds a number")
    return value


def _int(value: int | memoryview) -> int:
    if isinstance(value, memoryview):
        raise GraphError("graph skeleton: a number field holds bytes")
    return value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(value: int | memoryview) -> str:
    try:
        return bytes(_bytes(value)).decode("utf-8")
    except UnicodeDecodeError as err:
        raise GraphError(f"graph skeleton: a name is not UTF-8 ({err})") from err
