"""
Low-precision inference of ONNX exports: DySample's sampling coordinates kept in float32.

DySample's GridSample export samples at ``grid = base + offset * (2/W, 2/H)``, in [-1, 1].
In bfloat16 (8 significant bits) a grid value near 1 is off by up to 2^-8, which at a
336-pixel-wide level is 0.65 px; in float16, 0.08 px. Nearest upsampling has no coordinates
to lose, so a DySample-FPN that runs the grid in low precision drifts further from float32
than its nearest twin. What this module does about it:

* :func:`tag_sampling_nodes` (run by :func:`.writing.write_onnx` on every TorchScript-based
  export): the nodes of each DySample module, except its offset and scope
  convolutions, are renamed ``<module scope>/dysample_sampling/<node>`` so that a runtime's
  tooling can find them (:func:`sampling_nodes`), and the few float ops that OpenVINO's CPU
  plugin replaces while compiling (Sub, Div, Expand, Clip; the replacements would drop a
  precision mark) are written as the equal ops it keeps (Add of Neg, Mul by Reciprocal, Mul
  by an expanded 1, Max/Min). Float32 results are unchanged.
* :func:`openvino_model`: the ONNX file as an OpenVINO model whose tagged float nodes carry
  the ``DisablePrecisionConversion`` runtime attribute, which the CPU plugin honours under a
  bf16 or f16 ``INFERENCE_PRECISION_HINT`` by keeping those nodes in float32.
* :func:`float16_onnx`: the model converted to float16 for onnxruntime
  (``onnxruntime.transformers.float16``) with the tagged nodes in the converter's
  ``node_block_list``. The converter rounds every output of a blocked node to float16 and
  back before the next node reads it (a Cast pair per tensor); those round trips are removed,
  so the blocked chain, from the offsets to the sampled values, runs in float32. Whole
  R-CNNs do not convert (the converter writes an invalid graph).

The gather export needs none of this: its positions are an integer pixel plus a small
fraction (``dysample_d2.layers.gather``), which a low precision rounds by a small part of a
pixel only; it is tagged and marked all the same.
"""
import os
import tempfile

from torch import nn

__all__ = ["SAMPLING_TAG", "PRECISIONS", "tag_sampling_nodes", "sampling_nodes",
           "openvino_model", "float16_onnx"]

SAMPLING_TAG = "dysample_sampling"
# runtime -> the inference precisions it is checked at ("default": OpenVINO's own choice)
PRECISIONS = {"openvino": ("f32", "bf16", "f16", "default"), "onnxruntime": ("f32", "f16")}
_KEPT_TYPES = ("Sub", "Div", "Expand", "Clip")


def _dysample_scopes(module: nn.Module) -> list:
    """ONNX name prefixes of the DySample modules, e.g. '/backbone/fpn_upsample3/'."""
    from dysample_d2.layers import DySample

    return ["/" + name.replace(".", "/") + "/" for name, m in module.named_modules()
            if isinstance(m, DySample)]


def _is_float(types: dict, name: str) -> bool:
    import onnx

    return types.get(name) == onnx.TensorProto.FLOAT


def _tensor_types(graph) -> dict:
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(graph.value_info) + list(graph.input) + list(graph.output)}
    types.update({init.name: init.data_type for init in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            types.update({node.output[0]: a.t.data_type
                          for a in node.attribute if a.name == "value"})
    return types


def _kept_form(node, name):
    """The ops OpenVINO keeps marked, computing what `node` computes (float32)."""
    from onnx import TensorProto, helper

    out = list(node.output)
    if node.op_type == "Sub":
        return [helper.make_node("Neg", [node.input[1]], [name + "_neg"], name=name + "_neg"),
                helper.make_node("Add", [node.input[0], name + "_neg"], out, name=name)]
    if node.op_type == "Div":
        return [helper.make_node("Reciprocal", [node.input[1]], [name + "_rcp"],
                                 name=name + "_rcp"),
                helper.make_node("Mul", [node.input[0], name + "_rcp"], out, name=name)]
    if node.op_type == "Expand":
        one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
        return [helper.make_node("Constant", [], [name + "_one"], name=name + "_one", value=one),
                helper.make_node("Expand", [name + "_one", node.input[1]], [name + "_ones"],
                                 name=name + "_ones"),
                helper.make_node("Mul", [node.input[0], name + "_ones"], out, name=name)]
    # Clip(x, min, max) -> Min(Max(x, min), max), either bound optional
    nodes, x = [], node.input[0]
    bounds = [(op, b) for op, b in zip(("Max", "Min"), list(node.input[1:3]) + ["", ""]) if b]
    for i, (op, bound) in enumerate(bounds):
        last = i == len(bounds) - 1
        result = out[0] if last else f"{name}_{op.lower()}"
        nodes.append(helper.make_node(op, [x, bound], [result],
                                      name=name if last else f"{name}_{op.lower()}"))
        x = result
    return nodes or [node]


def tag_sampling_nodes(path: str, module: nn.Module) -> int:
    """
    Rename the sampling nodes of the DySample modules of `module` in the ONNX file at `path`
    (``.../fpn_upsample3/GridSample`` -> ``.../fpn_upsample3/dysample_sampling/GridSample``)
    and write their Sub, Div, Expand and Clip on floats in the forms OpenVINO keeps marked
    (see the module docstring). The offset and scope convolutions stay as they are.

    Returns:
        int: the number of tagged nodes (0 for models without DySample).
    """
    import onnx

    scopes = _dysample_scopes(module)
    if not scopes:
        return 0
    model = onnx.load(path)
    graph = model.graph
    types = _tensor_types(onnx.shape_inference.infer_shapes(model).graph)
    nodes, tagged = [], 0
    for node in graph.node:
        scope = next((s for s in scopes if node.name.startswith(s)), None)
        rest = node.name[len(scope):] if scope else ""
        if scope is None or rest.startswith(("offset/", "scope/")):
            nodes.append(node)
            continue
        name = f"{scope}{SAMPLING_TAG}/{rest}"
        if node.op_type in _KEPT_TYPES and _is_float(types, node.output[0]):
            replaced = _kept_form(node, name)
        else:
            node.name = name
            replaced = [node]
        nodes += replaced
        tagged += len(replaced)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, path)
    return tagged


def sampling_nodes(path_or_model) -> list:
    """Names of the tagged sampling nodes of an ONNX file or ModelProto."""
    import onnx

    model = onnx.load(path_or_model) if isinstance(path_or_model, str) else path_or_model
    return [n.name for n in model.graph.node if f"/{SAMPLING_TAG}/" in n.name]


def openvino_model(path: str, keep_sampling_f32: bool = True):
    """
    The ONNX export at `path` as an ``openvino.Model``; with `keep_sampling_f32`, its tagged
    float nodes marked ``DisablePrecisionConversion`` (any type to f16 and bf16), which the CPU
    plugin keeps in float32 under a bf16/f16 inference precision. The attribute has no Python
    constructor: it is written into the model's IR and read back.
    """
    import xml.etree.ElementTree as ET

    import openvino

    core = openvino.Core()
    model = core.read_model(path)
    if not keep_sampling_f32:
        return model
    with tempfile.TemporaryDirectory() as directory:
        xml_path = os.path.join(directory, "model.xml")
        openvino.save_model(model, xml_path, compress_to_fp16=False)
        tree = ET.parse(xml_path)
        marked = 0
        for layer in tree.getroot().iter("layer"):
            precisions = [p.get("precision") for p in layer.findall("output/port")]
            if (f"/{SAMPLING_TAG}/" not in layer.get("name", "") or layer.get("type") == "Const"
                    or not precisions or any(p != "FP32" for p in precisions)):
                continue  # integer nodes: the plugin's i64 -> i32 conversion must stay
            info = layer.find("rt_info")
            if info is None:
                info = ET.SubElement(layer, "rt_info")
            ET.SubElement(info, "attribute", name="DisablePrecisionConversion", version="0",
                          value="dynamic:f16,bf16")
            marked += 1
        tree.write(xml_path)
        model = core.read_model(xml_path)  # reads the weights now: the folder may go
    model.get_rt_info()["dysample_sampling_f32_nodes"] = str(marked)
    return model


def float16_onnx(path: str, out_path: str, keep_sampling_f32: bool = True) -> str:
    """
    Write the ONNX export at `path` converted to float16 (inputs and outputs stay float32) to
    `out_path`, for onnxruntime; with `keep_sampling_f32` the tagged sampling nodes stay in
    float32 (see the module docstring). Returns `out_path`.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(path)
    blocked = sampling_nodes(model) if keep_sampling_f32 else None
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked)
    if keep_sampling_f32:
        _drop_float16_round_trips(converted)
    onnx.save(converted, out_path)
    return out_path


def _drop_float16_round_trips(model) -> None:
    """
    Let every ``Cast(Cast(x, to=float16), to=float32)`` of a float32 `x` read `x` itself and
    remove the Casts nobody reads any more.
    """
    import onnx

    graph = model.graph
    types = _tensor_types(onnx.shape_inference.infer_shapes(model).graph)
    producer = {output: node for node in graph.node for output in node.output}

    def cast_to(node):
        if node is None or node.op_type != "Cast":
            return None
        return next(a.i for a in node.attribute if a.name == "to")

    source = {}  # float32 round trip's output -> the float32 tensor it came from
    for node in graph.node:
        first = producer.get(node.input[0]) if node.input else None
        if (cast_to(node) == onnx.TensorProto.FLOAT
                and cast_to(first) == onnx.TensorProto.FLOAT16
                and _is_float(types, first.input[0])):
            source[node.output[0]] = first.input[0]
    for node in graph.node:
        node.input[:] = [source.get(name, name) for name in node.input]
    while True:  # drop the Casts nobody reads (the converter's nodes are not in order)
        needed = {o.name for o in graph.output} | {i for node in graph.node for i in node.input}
        kept = [node for node in graph.node
                if node.op_type != "Cast" or any(o in needed for o in node.output)]
        if len(kept) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(kept)
