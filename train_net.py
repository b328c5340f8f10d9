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

Bad input (a missing file or dataset, an unknown key, a value that is not allowed, a class
count that does not fit the datasets, a checkpoint that cannot be read, downloaded or does
not fit the model for --eval-only) is refused before anything is written to the output
directory: ``error: <what is wrong and how to fix it>`` on stderr, exit code 2, and no
traceback (which is kept for bugs). Without CUDA, ``--num-gpus N`` starts N CPU processes
that train together over gloo.
"""
import logging
import os
import sys
import warnings

# Detectron2's imports warn on every command about APIs it uses (torch.jit.script,
# pkg_resources): Detectron2's to change, nothing a user of this script can act on.
warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
warnings.filterwarnings("ignore", r"pkg_resources is deprecated", UserWarning)

import detectron2.utils.comm as comm  # noqa: E402
from detectron2.engine import default_argument_parser, launch  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from torch.multiprocessing import ProcessExitedException  # noqa: E402

from tools.engine import (  # noqa: E402
    Run,
    UserInputError,
    check_datasets,
    check_num_classes,
    check_weights,
    load_exact_checkpoint,
    setup_run,
)

logger = logging.getLogger("detectron2.dysample_d2")


def check_input(args):
    """The run of ``args`` once its config, checkpoint file, datasets and class counts are
    checked (a UserInputError if not). A resumed run's checkpoint is the output dir's."""
    run = Run(args.config_file, args.opts, eval_only=args.eval_only)
    if args.eval_only or not (args.resume and os.path.isfile(
            os.path.join(run.output_dir, "last_checkpoint"))):
        check_weights(run.weights, required=args.eval_only, key=run.weights_key)
    names, key = run.datasets()
    check_datasets(names, key)
    check_num_classes(run.num_classes(), names)
    return run


def main(args):
    # Everything that can be refused is checked before setup_run writes the output
    # directory: config, checkpoint file, datasets, the model itself, the checkpoint's fit.
    run = check_input(args)
    seed_all_rng(None if run.seed < 0 else run.seed + comm.get_rank())
    model = run.build_model()
    if args.eval_only:
        load_exact_checkpoint(model, run.weights, key=run.weights_key)

    setup_run(run.cfg, args, run.output_dir)
    logger.info(f"Model:\n{model}")
    if args.eval_only:
        return run.evaluate(model)
    return run.train(model, resume=args.resume)


def refuse(error: UserInputError):
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def main_or_refuse(args):
    """main in each process; a user error is printed once (by the first process)."""
    try:
        return main(args)
    except UserInputError as e:
        if comm.get_rank() == 0:
            refuse(e)
        sys.exit(2)


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    try:
        if args.num_gpus * args.num_machines > 1:
            check_input(args)  # before any process is started
        launch(main_or_refuse, args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    except UserInputError as e:
        refuse(e)
    except ProcessExitedException as e:  # a worker refused the input, and said why
        if e.exit_code != 2:
            raise
        sys.exit(2)


if __name__ == "__main__":
    invoke_main()
