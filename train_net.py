#!/usr/bin/env python
"""
DySample-FPN training and evaluation, for YACS (.yaml) and LazyConfig (.py) configs.

    python train_net.py --config-file configs/COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file ... --resume
    python train_net.py --config-file ... --num-gpus 8 [--num-machines M --machine-rank R --dist-url U]

    python train_net.py --config-file configs/new_baselines/mask_rcnn_R_50_DySample_FPN_100ep_LSJ.py \
        [--num-gpus 8] [train.max_iter=1000 ...]
    python train_net.py --config-file configs/new_baselines/... --eval-only \
        train.init_checkpoint=output/model_final.pth

YACS configs take trailing ``KEY VALUE`` options and train with Detectron2's DefaultTrainer;
lazy configs take ``key=value`` overrides and train as Detectron2's
``tools/lazyconfig_train_net.py`` does (``train.amp``, ``train.ddp``, ``train.checkpointer``,
``train.eval_period``, evaluation by ``dataloader.evaluator``).

Bad input (a missing file or dataset, an unknown key, a value that is not allowed, a
checkpoint that does not fit the model for --eval-only) is refused before anything is
written to the output directory. Without CUDA, ``--num-gpus N`` starts N CPU processes that
train together over gloo.
"""
import logging

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, launch
from detectron2.utils.env import seed_all_rng

from dysample_d2.engine import (
    LazyRun,
    Trainer,  # noqa: F401  (the YACS trainer, for scripts that import it from here)
    YacsRun,
    check_datasets,
    check_weights,
    load_exact_checkpoint,
    setup_run,
)

logger = logging.getLogger("detectron2.dysample_d2")


def load_run(args):
    """The run of ``args.config_file``: a LazyRun for .py files, a YacsRun otherwise."""
    if args.config_file.endswith(".py"):
        return LazyRun(args.config_file, args.opts, eval_only=args.eval_only)
    return YacsRun(args.config_file, args.opts)


def main(args):
    # Everything that can be refused is checked before setup_run writes the output
    # directory: config, datasets, checkpoint file, the model itself, the checkpoint's fit.
    run = load_run(args)
    check_weights(run.weights, required=args.eval_only, key=run.weights_key)
    check_datasets(*run.datasets(args.eval_only))
    seed_all_rng(None if run.seed < 0 else run.seed + comm.get_rank())
    model = run.build_model()
    if args.eval_only:
        load_exact_checkpoint(model, run.weights, key=run.weights_key)

    setup_run(run.cfg, args, run.output_dir)
    logger.info(f"Model:\n{model}")
    if args.eval_only:
        return run.evaluate(model)
    return run.train(model, resume=args.resume)


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
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
