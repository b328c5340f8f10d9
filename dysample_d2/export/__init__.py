"""
Tracing and export of Detectron2 models with DySample: TorchScript by tracing, ONNX, and
torch.export programs, at any input height and width.

* :mod:`.model`: the parts of a model that export (:func:`tracing_adapter`, the whole model;
  :class:`BackboneExport`, image -> features);
* :mod:`.tracing`: :func:`trace_model` and the :class:`ExportError` reports every format shares;
* :mod:`.onnx`: :func:`export_onnx`, DySample sampling as ``dysample_d2.layers.sampler`` says;
* :mod:`.program`: :func:`export_program`, torch.export with dynamic height and width.

``torch.jit.script`` (Detectron2's ``scripting_with_instances``) stops on DySample in one line:
its CPU sampling is a Python autograd Function. Running written exports in runtimes and at low
precision is left to deployment tooling outside this package.
"""
from .model import BackboneExport, tracing_adapter
from .onnx import export_onnx
from .program import export_program
from .tracing import ExportError, trace_model

__all__ = ["ExportError", "BackboneExport", "tracing_adapter", "trace_model", "export_onnx",
           "export_program"]
