#!/usr/bin/env python
"""
DySample-FPN training and evaluation script, on Detectron2's DefaultTrainer.

    python train_net.py --config-file configs/COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file ... --resume
    python train_net.py --config-file ... --num-gpus 8 [--num-machines M --machine-rank R --dist-url U]

Without CUDA, ``--num-gpus N`` starts N CPU processes that train together over gloo.
"""
import functools
import logging
import os
import weakref

import detectron2.utils.comm as comm
import detectron2.engine.defaults as d2_defaults
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
    verify_results,
)
from detectron2.data import MetadataCatalog

from dysample_d2 import has_compiled_ops
from dysample_d2.engine import (
    AtomicDetectionCheckpointer,
    check_datasets,
    check_weights,
    load_exact_checkpoint,
    setup_config,
)

logger = logging.getLogger("detectron2.dysample_d2")


class Trainer(DefaultTrainer):
    """DefaultTrainer with the configs' evaluators, CPU multi-process and atomic checkpoints."""

    def __init__(self, cfg):
        if cfg.MODEL.DEVICE != "cpu":
            super().__init__(cfg)
            return
        # DefaultTrainer wraps the model with create_ddp_model(model), which passes
        # device_ids=[rank]: torch refuses that for a CPU model. CPU processes need None.
        create_ddp_model = d2_defaults.create_ddp_model
        d2_defaults.create_ddp_model = functools.partial(create_ddp_model, device_ids=None)
        try:
            super().__init__(cfg)
        finally:
            d2_defaults.create_ddp_model = create_ddp_model

    def train(self):
        """Train; return the final evaluation's results (DefaultTrainer returns them only
        when TEST.EXPECTED_RESULTS is set)."""
        super().train()
        return getattr(self, "_last_eval_results", None)

    def build_hooks(self):
        self.checkpointer = AtomicDetectionCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        return super().build_hooks()

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """COCO boxes (+ masks), or for panoptic datasets: PQ, semantic and instance metrics."""
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluator_type = MetadataCatalog.get(dataset_name).evaluator_type
        use_fast_impl = has_compiled_ops()
        if not use_fast_impl:
            logger.info("detectron2's compiled ops are not installed: COCO AP uses pycocotools")
        evaluators = []
        if evaluator_type == "coco_panoptic_seg":
            evaluators.append(SemSegEvaluator(dataset_name, distributed=True,
                                              output_dir=output_folder))
            evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
        if evaluator_type in ("coco", "coco_panoptic_seg"):
            evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder,
                                            use_fast_impl=use_fast_impl))
        if not evaluators:
            raise NotImplementedError(
                f"no evaluator for dataset {dataset_name!r} of evaluator_type {evaluator_type!r}"
            )
        return DatasetEvaluators(evaluators)


def setup(args):
    cfg = setup_config(args.config_file, args.opts)
    cfg.freeze()
    # Fail on bad input before any model is built or anything is written.
    check_weights(cfg.MODEL.WEIGHTS, required=args.eval_only)
    check_datasets(cfg.DATASETS.TEST if args.eval_only else cfg.DATASETS.TRAIN + cfg.DATASETS.TEST)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_exact_checkpoint(model, cfg.MODEL.WEIGHTS)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
