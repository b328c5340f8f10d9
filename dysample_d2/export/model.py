"""
What every export format records of a Detectron2 model: its image -> features part
(:class:`BackboneExport`) or its image -> flattened detections part (:func:`tracing_adapter`).
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN, PanopticFPN
from detectron2.structures import ImageList

__all__ = ["BackboneExport", "tracing_adapter", "pad_image"]


def pad_image(x: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
    """
    [C, H, W] -> [1, C, H', W'] zero-padded at the bottom and right to the backbone's size
    divisibility, as ``ImageList.from_tensors`` pads one image. While tracing, through
    ``ImageList`` (which records the padding from tensor sizes); otherwise with integer
    sizes, which torch.export keeps symbolic (``ImageList`` computes them in tensors, whose
    values torch.export cannot see). The padded size is written ``ceil(h / d) * d``, a
    multiple of ``d`` torch.export can see as one: from ``h + (-h) % d`` it cannot prove the
    strided convolutions' output sizes.
    """
    constraints = backbone.padding_constraints or {}
    if torch.jit.is_tracing() or constraints.get("square_size", 0) > 0:
        return ImageList.from_tensors(
            [x], backbone.size_divisibility, padding_constraints=backbone.padding_constraints
        ).tensor
    divisor = max(constraints.get("size_divisibility", backbone.size_divisibility), 1)
    h, w = x.shape[-2:]
    padded_h = (h + divisor - 1) // divisor * divisor
    padded_w = (w + divisor - 1) // divisor * divisor
    return F.pad(x, (0, padded_w - w, 0, padded_h - h))[None]


def _inference_func(model):
    """(model, image[3, H, W]) -> outputs, without resizing to the original image size."""
    def rcnn(model, image):
        return [{"instances": model.inference([{"image": image}], do_postprocess=False)[0]}]

    def panoptic(model, image):
        instances, sem_seg = model.inference([{"image": image}], do_postprocess=False)
        return [{"instances": instances[0], "sem_seg": sem_seg[0]}]

    def other(model, image):  # e.g. RetinaNet: traceable, resizes to the input's own size
        return model([{"image": image}])

    if isinstance(model, PanopticFPN):
        return panoptic
    return rcnn if isinstance(model, GeneralizedRCNN) else other


def tracing_adapter(model: nn.Module, image: torch.Tensor) -> TracingAdapter:
    """
    The whole model as a module every exporter takes: Detectron2's ``TracingAdapter`` of its
    inference without post-processing (boxes in input-image pixels), one image in, a tuple of
    tensors out.

    Args:
        model: a Detectron2 meta-architecture.
        image (Tensor[3, H, W]): float, cfg.INPUT.FORMAT, 0-255 (``batched_inputs[i]["image"]``).

    Returns:
        TracingAdapter (eval mode): image -> tuple of tensors;
        ``adapter.outputs_schema(outputs)`` rebuilds ``[{"instances": Instances, ...}]``.
    """
    return TracingAdapter(model.eval(), (image,), _inference_func(model)).eval()


class BackboneExport(nn.Module):
    """
    The part of a model that exports to every format (torch.export included, which whole
    R-CNNs do not): the features the model's heads see. Normalizes the image, pads it to a
    multiple of ``backbone.size_divisibility`` as ``model.preprocess_image`` does, runs the
    backbone.

    Shapes: image [3, H, W] (model input format, 0-255) -> tuple of [1, C, H_k, W_k], one per
    ``self.names`` ("p2", ..., "p6").
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone.eval()  # only what is used: a smaller export
        self.register_buffer("pixel_mean", model.pixel_mean, persistent=False)
        self.register_buffer("pixel_std", model.pixel_std, persistent=False)
        shapes = self.backbone.output_shape()
        self.names = sorted(shapes, key=lambda k: shapes[k].stride)

    def forward(self, image: torch.Tensor):
        x = (image.to(self.pixel_mean.device) - self.pixel_mean) / self.pixel_std
        features = self.backbone(pad_image(x, self.backbone))
        return tuple(features[k] for k in self.names)
