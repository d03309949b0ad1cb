"""The intermediate representation: nodes, graphs, dtypes, source locations, printing."""
from .dtypes import ALL_DTYPES, DType, as_dtype, bool_, float32, float64, int32, int64, promote, to_float
from .errors import DTypeError, GraphcError, InputError, ShapeError
from .graph import Graph, current_graph
from .node import Attrs, Node, Provenance, Shape, type_str
from .source import SourceLoc, user_location

__all__ = [
    "ALL_DTYPES", "Attrs", "DType", "DTypeError", "Graph", "GraphcError", "InputError", "Node", "Provenance",
    "Shape", "ShapeError", "SourceLoc", "as_dtype", "bool_", "current_graph", "float32", "float64", "int32",
    "int64", "promote", "to_float", "type_str", "user_location",
]
