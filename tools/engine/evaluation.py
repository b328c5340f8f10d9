"""Evaluators for the datasets the configs name, and evaluation of a lazy config's model."""
import functools
import logging

from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
    inference_on_dataset,
    print_csv_format,
)

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _coco_fast_impl() -> bool:
    """
    Detectron2's fast COCO AP needs its compiled extension; pycocotools gives the same AP.
    A Detectron2 installed without one (scripts/install.sh's stand-in ``_C``) says so.
    """
    try:
        import detectron2._C as C
    except ImportError:
        C = None
    if C is not None and not getattr(C, "IS_STANDIN", False):
        return True
    logger.info("detectron2's compiled ops are not installed: COCO AP uses pycocotools")
    return False


def build_evaluator(dataset_name: str, output_folder: str) -> DatasetEvaluators:
    """
    The evaluators of a dataset's ``evaluator_type``: COCO boxes (and masks); for
    panoptic datasets PQ, semantic and instance metrics; for semantic segmentation
    datasets (ADE20K) mIoU.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).evaluator_type
    evaluators = []
    if evaluator_type in ("sem_seg", "coco_panoptic_seg"):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True,
                                          output_dir=output_folder))
    if evaluator_type == "coco_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    if evaluator_type in ("coco", "coco_panoptic_seg"):
        evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder,
                                        use_fast_impl=_coco_fast_impl()))
    if not evaluators:
        raise NotImplementedError(
            f"no evaluator for dataset {dataset_name!r} of evaluator_type {evaluator_type!r}"
        )
    return DatasetEvaluators(evaluators)


def evaluate_lazy(cfg, model):
    """Inference over ``dataloader.test`` scored by ``dataloader.evaluator``; the results
    (as Detectron2's evaluators return them) are also printed in its csv format."""
    evaluator_cfg = cfg.dataloader.evaluator
    if "COCOEvaluator" in str(evaluator_cfg.get("_target_", "")) and \
            "use_fast_impl" not in evaluator_cfg:
        evaluator_cfg.use_fast_impl = _coco_fast_impl()
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(evaluator_cfg)
    )
    print_csv_format(results)
    return results
