"""
Rename the tensors of an mmdetection (2.x or 3.x) R-CNN checkpoint to this project's models.

The mapping covers what the authors of DySample released: Faster and Mask R-CNN on
ResNet-50/101 with mmdet's ``FPN_CARAFE`` neck (their training logs print it: five laterals,
the fifth a 3x3 stride-2 conv on C5, five output convs, four upsamplers; built by
``build_resnet_carafe_fpn_backbone``), Panoptic FPN with their ``FPN_UPSAMPLE`` neck (three
upsamplers; tiny-smart/detection-with-upsamplers), and mmdet's own nearest-neighbour FPN
models:

===========================================  ================================================
mmdet                                        Detectron2 (this project)
===========================================  ================================================
backbone.conv1 / bn1                         backbone.bottom_up.stem.conv1 / .norm (FrozenBN)
backbone.layer{n}.{m}.conv{k} / bn{k}        backbone.bottom_up.res{n+1}.{m}.conv{k} / .norm
backbone.layer{n}.{m}.downsample.0 / .1      backbone.bottom_up.res{n+1}.{m}.shortcut / .norm
neck.lateral_convs.{i}.conv                  backbone.fpn_lateral{s_i}
neck.fpn_convs.{i}.conv                      backbone.fpn_output{s_i}
neck.upsample_modules.{i}                    backbone.fpn_upsample{s_(i+1)} (it upsamples
  (DySample, CARAFE, pixel shuffle, deconv)  lateral i+1 onto lateral i; names kept)
neck.lateral_convs.{n} / fpn_convs.{n}       backbone.fpn_lateral{s_n} / fpn_output{s_n}, the
  (FPN_CARAFE, n = number of inputs)         extra level: s_n = s_(n-1) + 1 (P6)
rpn_head.rpn_conv / rpn_cls / rpn_reg        proposal_generator.rpn_head.conv / objectness_logits
                                             / anchor_deltas
roi_head.bbox_head.shared_fcs.{j}            roi_heads.box_head.fc{j+1}
roi_head.bbox_head.fc_cls / fc_reg           roi_heads.box_predictor.cls_score / bbox_pred
roi_head.mask_head.convs.{j}.conv            roi_heads.mask_head.mask_fcn{j+1}
roi_head.mask_head.upsample / conv_logits    roi_heads.mask_head.deconv / predictor
roi_head.mask_head.upsample.channel_compressor / .content_encoder (CARAFE)
                                             roi_heads.mask_head.upsample.(same)
semantic_head.conv_upsample_layers.{i}       sem_seg_head.p{s_i}.{2j} (+ .norm for GroupNorm)
  .conv.{j}.conv / .gn
semantic_head.conv_logits                    sem_seg_head.predictor, rows reordered: mmdet puts
                                             the merged "things" class after the 53 stuff
                                             classes, Detectron2 first
===========================================  ================================================

``s_i`` is the stage of the i-th FPN input (res2..res5 -> 2..5). The layouts that need no change
were checked against both code bases: BN eps 1e-5 (FrozenBN too), anchors ratio-major in the
same order (one size per level) with the same centres, box deltas (dx, dy, dw, dh) per anchor /
class with the same encoding (RPN stds 1 = weights 1; RoI stds (0.1, 0.1, 0.2, 0.2) =
weights (10, 10, 5, 5)), background last in fc_cls, COCO classes in category-id order.
``scripts/verify_mmdet_equivalence.py`` runs both frameworks on converted random models.

Nothing is converted partially: a key that no rule maps, a model key that the checkpoint does
not provide, or a shape that differs raises :class:`ConversionError` listing all of them.
"""
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = ["ConversionError", "ConversionReport", "rename_mmdet_key", "convert_state_dict",
           "reorder_semantic_classes", "detect_task"]

_BN = r"(weight|bias|running_mean|running_var)"
_WB = r"(weight|bias)"


class ConversionError(ValueError):
    """The checkpoint does not match the model: lists every offending key."""


class ConversionReport:
    """What a conversion did: renamed, dropped (with why) and reordered tensors."""

    def __init__(self):
        self.renamed: Dict[str, str] = {}
        self.dropped: Dict[str, str] = {}
        self.notes: List[str] = []

    def summary(self) -> str:
        lines = [f"{len(self.renamed)} tensors renamed, {len(self.dropped)} dropped"]
        reasons: Dict[str, int] = {}
        for why in self.dropped.values():
            reasons[why] = reasons.get(why, 0) + 1
        lines += [f"  dropped ({n}): {why}" for why, n in sorted(reasons.items())]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _stage(in_features: Sequence[str], index: int) -> int:
    if index >= len(in_features):
        raise KeyError(f"FPN input {index} does not exist "
                       f"(MODEL.FPN.IN_FEATURES={list(in_features)})")
    name = in_features[index]
    if not re.fullmatch(r"res\d", name):
        raise KeyError(f"FPN input {name!r} is not a ResNet stage res2..res5")
    return int(name[3:])


def _level(in_features: Sequence[str], index: int) -> int:
    """Stage of FPN level ``index``: the inputs' stages, then one past the last input, the
    CARAFE-layout FPN's extra level (FPN_CARAFE's ``lateral_convs.4`` / ``fpn_convs.4`` and
    the ``upsample_modules.3`` that takes it to P5, for res2..res5)."""
    if index == len(in_features):
        return _stage(in_features, index - 1) + 1
    return _stage(in_features, index)


# (pattern, replacement builder). The builder gets the match and the FPN in_features.
_RULES = [
    (r"backbone\.conv1\.weight", lambda m, f: "backbone.bottom_up.stem.conv1.weight"),
    (rf"backbone\.bn1\.{_BN}", lambda m, f: f"backbone.bottom_up.stem.conv1.norm.{m[1]}"),
    (r"backbone\.layer(\d)\.(\d+)\.conv(\d)\.weight",
     lambda m, f: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"),
    (rf"backbone\.layer(\d)\.(\d+)\.bn(\d)\.{_BN}",
     lambda m, f: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (r"backbone\.layer(\d)\.(\d+)\.downsample\.0\.weight",
     lambda m, f: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.weight"),
    (rf"backbone\.layer(\d)\.(\d+)\.downsample\.1\.{_BN}",
     lambda m, f: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
    (rf"neck\.lateral_convs\.(\d+)\.conv\.{_WB}",
     lambda m, f: f"backbone.fpn_lateral{_level(f, int(m[1]))}.{m[2]}"),
    (rf"neck\.fpn_convs\.(\d+)\.conv\.{_WB}",
     lambda m, f: f"backbone.fpn_output{_level(f, int(m[1]))}.{m[2]}"),
    # DySample; CARAFE (mmcv's CARAFEPack); pixel shuffle (PixelShufflePack); deconv (a bare
    # ConvTranspose2d): this project's upsamplers keep those names
    (r"neck\.upsample_modules\.(\d+)\.((?:offset|scope|channel_compressor|content_encoder"
     r"|upsample_conv)\.(?:weight|bias)|init_pos|weight|bias)",
     lambda m, f: f"backbone.fpn_upsample{_level(f, int(m[1]) + 1)}.{m[2]}"),
    (rf"rpn_head\.rpn_conv\.{_WB}", lambda m, f: f"proposal_generator.rpn_head.conv.{m[1]}"),
    (rf"rpn_head\.rpn_cls\.{_WB}",
     lambda m, f: f"proposal_generator.rpn_head.objectness_logits.{m[1]}"),
    (rf"rpn_head\.rpn_reg\.{_WB}",
     lambda m, f: f"proposal_generator.rpn_head.anchor_deltas.{m[1]}"),
    (rf"roi_head\.bbox_head\.shared_fcs\.(\d)\.{_WB}",
     lambda m, f: f"roi_heads.box_head.fc{int(m[1]) + 1}.{m[2]}"),
    (rf"roi_head\.bbox_head\.fc_cls\.{_WB}",
     lambda m, f: f"roi_heads.box_predictor.cls_score.{m[1]}"),
    (rf"roi_head\.bbox_head\.fc_reg\.{_WB}",
     lambda m, f: f"roi_heads.box_predictor.bbox_pred.{m[1]}"),
    (rf"roi_head\.mask_head\.convs\.(\d)\.conv\.{_WB}",
     lambda m, f: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.{m[2]}"),
    (rf"roi_head\.mask_head\.upsample\.{_WB}", lambda m, f: f"roi_heads.mask_head.deconv.{m[1]}"),
    # FCNMaskHead's CARAFE upsample (MaskRCNNCarafeUpsampleHead keeps CARAFEPack's names)
    (rf"roi_head\.mask_head\.upsample\.(channel_compressor|content_encoder)\.{_WB}",
     lambda m, f: f"roi_heads.mask_head.upsample.{m[1]}.{m[2]}"),
    (rf"roi_head\.mask_head\.conv_logits\.{_WB}",
     lambda m, f: f"roi_heads.mask_head.predictor.{m[1]}"),
    (r"semantic_head\.conv_upsample_layers\.(\d)\.conv\.(\d)\.conv\.weight",
     lambda m, f: f"sem_seg_head.p{_stage(f, int(m[1]))}.{2 * int(m[2])}.weight"),
    (rf"semantic_head\.conv_upsample_layers\.(\d)\.conv\.(\d)\.gn\.{_WB}",
     lambda m, f: f"sem_seg_head.p{_stage(f, int(m[1]))}.{2 * int(m[2])}.norm.{m[3]}"),
    (rf"semantic_head\.conv_logits\.{_WB}", lambda m, f: f"sem_seg_head.predictor.{m[1]}"),
]
_COMPILED = [(re.compile(p), build) for p, build in _RULES]

# Keys that hold no model state in Detectron2 (dropped, with the reason reported).
_DROPPED = [
    (re.compile(r".*\.num_batches_tracked"), "BatchNorm step counters (FrozenBN has none)"),
    (re.compile(r"data_preprocessor\..*"), "mmdet data preprocessor (mean/std are in the config)"),
]
_SCOPE_BIAS = re.compile(r"neck\.upsample_modules\.(\d+)\.scope\.bias")


def rename_mmdet_key(key: str, in_features: Sequence[str] = ("res2", "res3", "res4", "res5")
                     ) -> Optional[str]:
    """The Detectron2 name of mmdet tensor ``key``; None when no rule maps it."""
    for pattern, build in _COMPILED:
        match = pattern.fullmatch(key)
        if match:
            return build(match, list(in_features))
    return None


def reorder_semantic_classes(tensor: torch.Tensor, num_stuff: int) -> torch.Tensor:
    """mmdet's semantic logits are (stuff_0..stuff_{S-1}, things); Detectron2's
    (things, stuff_0..stuff_{S-1})."""
    if tensor.shape[0] != num_stuff + 1:
        raise ConversionError(
            f"semantic_head.conv_logits has {tensor.shape[0]} outputs; expected {num_stuff + 1} "
            f"(SEM_SEG_HEAD.NUM_CLASSES = 1 things class + {num_stuff} stuff classes)"
        )
    order = torch.cat([torch.tensor([num_stuff]), torch.arange(num_stuff)])
    return tensor[order].clone()


def detect_task(keys) -> str:
    """'panoptic', 'mask' or 'det' from the heads a checkpoint holds."""
    keys = list(keys)
    if any(k.startswith("semantic_head.") for k in keys):
        return "panoptic"
    if any(k.startswith("roi_head.mask_head.") for k in keys):
        return "mask"
    return "det"


def convert_state_dict(
    mmdet_state: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    in_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """
    Args:
        mmdet_state: the checkpoint's ``state_dict`` (mmdet names; a ``module.`` prefix is removed).
        reference: the state dict of the Detectron2 model the result must load into exactly
            (names and shapes; e.g. a randomly initialised model built from the config; meta
            tensors do for the names and shapes, but skip the init_pos value check).
        in_features: MODEL.FPN.IN_FEATURES of that model.

    Returns:
        (state dict with Detectron2 names, report)

    Raises:
        ConversionError: unmapped checkpoint keys, model keys the checkpoint lacks, keys it
            does not know, shape differences, a non-zero DySample+ scope bias for a model
            built without one (MODEL.FPN.DYSAMPLE.SCOPE_BIAS False).
    """
    report = ConversionReport()
    converted: Dict[str, torch.Tensor] = {}
    unmapped, problems = [], []
    for key, value in mmdet_state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if not isinstance(value, torch.Tensor):
            unmapped.append(f"{key} (not a tensor: {type(value).__name__})")
            continue
        reason = next((why for pattern, why in _DROPPED if pattern.fullmatch(key)), None)
        if reason:
            report.dropped[key] = reason
            continue
        if _SCOPE_BIAS.fullmatch(key) and _target_key(key, in_features) not in reference:
            if value.abs().max().item() != 0:
                problems.append(
                    f"{key}: non-zero bias of DySample+'s scope conv (the authors' first "
                    "dysample.py release had one), but the model's scope conv has none: convert "
                    "and evaluate with MODEL.FPN.DYSAMPLE.SCOPE_BIAS True (script: --opts "
                    "MODEL.FPN.DYSAMPLE.SCOPE_BIAS True)"
                )
            else:
                report.dropped[key] = ("all-zero bias of the DySample+ scope conv "
                                       "(exactly no effect)")
            continue
        try:
            new_key = rename_mmdet_key(key, in_features)
        except KeyError as e:
            unmapped.append(f"{key} ({e.args[0]})")
            continue
        if new_key is None:
            unmapped.append(key)
            continue
        if new_key in converted:
            problems.append(f"{key}: maps to {new_key}, which another key already filled")
            continue
        if new_key == "sem_seg_head.predictor.weight" or new_key == "sem_seg_head.predictor.bias":
            value = reorder_semantic_classes(value, value.shape[0] - 1)
            if new_key.endswith("weight"):
                report.notes.append("semantic classes reordered: mmdet's last ('things') first")
        converted[new_key] = value.detach().clone().contiguous()
        report.renamed[key] = new_key

    missing = sorted(set(reference) - set(converted))
    unexpected = sorted(set(converted) - set(reference))
    for key in sorted(set(converted) & set(reference)):
        got, want = tuple(converted[key].shape), tuple(reference[key].shape)
        if got != want:
            source = next(k for k, v in report.renamed.items() if v == key)
            problems.append(
                f"{source} -> {key}: shape {got} in the checkpoint, {want} in the model")
        elif (key.endswith(".init_pos") and not reference[key].is_meta
              and not torch.equal(converted[key].float(), reference[key].float())):
            problems.append(f"{key}: DySample init_pos differs from this project's layout")
    if unmapped or missing or unexpected or problems:
        sections = []
        if unmapped:
            sections.append(f"{len(unmapped)} checkpoint keys no rule maps:\n    "
                            + "\n    ".join(unmapped))
        if missing:
            sections.append(f"{len(missing)} model keys the checkpoint does not provide:\n    "
                            + "\n    ".join(missing))
        if unexpected:
            sections.append(f"{len(unexpected)} converted keys the model does not have:\n    "
                            + "\n    ".join(f"{k} (from {_source(report, k)})" for k in unexpected))
        if problems:
            sections.append(f"{len(problems)} other problems:\n    " + "\n    ".join(problems))
        raise ConversionError(
            "the mmdet checkpoint does not match the model built from the config (other "
            "architecture, depth or upsampler?); nothing was written.\n  " + "\n  ".join(sections)
        )
    ordered = {key: converted[key] for key in reference}  # the model's own order
    return ordered, report


def _target_key(key: str, in_features: Sequence[str]) -> Optional[str]:
    try:
        return rename_mmdet_key(key, in_features)
    except KeyError:
        return None


def _source(report: ConversionReport, new_key: str) -> str:
    return next((k for k, v in report.renamed.items() if v == new_key), "?")
