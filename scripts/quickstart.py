"""
The main job on built-in data: generate a small COCO-layout dataset, train a DySample-FPN
model on it with train_net.py (which evaluates the final model), and draw its predictions
and where DySample samples. A finished checkpoint in the output folder is evaluated with
train_net.py --eval-only instead of trained again. Run by scripts/quickstart.sh.
"""
import argparse
import os
import re
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "det": "configs/quickstart/faster_rcnn_R_18_DySample_FPN_tiny.yaml",
    "mask": "configs/quickstart/mask_rcnn_R_50_DySample_FPN_tiny.yaml",
    "panoptic": "configs/quickstart/panoptic_fpn_R_50_DySample_tiny.yaml",
}
FULL_CONFIGS = {
    "det": "configs/COCO-Detection/faster_rcnn_R_50_DySample_FPN_1x.yaml",
    "mask": "configs/COCO-InstanceSegmentation/mask_rcnn_R_50_DySample_FPN_1x.yaml",
    "panoptic": "configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_DySample_1x.yaml",
}
STEPS = 4


class StepFailed(RuntimeError):
    pass


def step(index, message):
    print(f"\n[quickstart] {index}/{STEPS} {message}", flush=True)


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    parser.add_argument("--task", choices=sorted(CONFIGS), default="det",
                        help="det: Faster R-CNN R-18, mask: Mask R-CNN R-50, "
                             "panoptic: Panoptic FPN R-50 (configs/quickstart/)")
    parser.add_argument("--config-file", metavar="FILE", default=None,
                        help="train this config instead of the --task one")
    parser.add_argument("--iters", type=positive_int, default=None,
                        help="training iterations (default: the config's SOLVER.MAX_ITER); "
                             "the learning-rate step and warmup scale with it")
    parser.add_argument("--out", default=os.path.join(REPO, "output", "quickstart"),
                        help="output directory (a folder per task or config inside)")
    parser.add_argument("--datasets", default=os.path.join(REPO, "datasets"),
                        help="DETECTRON2_DATASETS folder for the generated data")
    return parser


def run(cmd, env, what, fix):
    """Run `cmd`, streaming its output; return the output; raise StepFailed on failure."""
    print("[quickstart] $ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    if proc.wait() != 0:
        tail = "".join(lines[-5:])
        raise StepFailed(f"{what} failed (exit code {proc.returncode}). {fix}\n{tail}")
    return "".join(lines)


def final_iteration(checkpoint):
    if not os.path.isfile(checkpoint):
        return None
    return torch.load(checkpoint, map_location="cpu", weights_only=False).get("iteration")


def schedule(cfg, iters):
    """SOLVER options that train `iters` iterations (the config's own schedule when None)
    and checkpoint only at the end (model_final.pth)."""
    opts = []
    if iters is not None:
        opts += ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({int(iters * 0.8)},)",
                 "SOLVER.WARMUP_ITERS", str(min(cfg.SOLVER.WARMUP_ITERS, iters // 4))]
    max_iter = iters or cfg.SOLVER.MAX_ITER
    return opts + ["SOLVER.CHECKPOINT_PERIOD", str(max_iter + 1)], max_iter


def parse_copypaste(output):
    """{task: {metric: value}} from Detectron2's `copypaste:` evaluation lines."""
    results, lines = {}, re.findall(r"copypaste: (.*)", output)
    for i, line in enumerate(lines):
        if line.startswith("Task: ") and i + 2 < len(lines):
            names, values = lines[i + 1].split(","), lines[i + 2].split(",")
            results[line[len("Task: "):]] = dict(zip(names, map(float, values)))
    return results


def pick_val_image(datasets):
    """The validation image with the most annotated objects (ties: the first)."""
    import json

    coco = os.path.join(datasets, "coco")
    with open(os.path.join(coco, "annotations", "instances_val2017.json")) as f:
        data = json.load(f)
    if not data["images"]:
        raise StepFailed(f"no validation image in {coco}/annotations/instances_val2017.json")
    counts = {image["id"]: 0 for image in data["images"]}
    for annotation in data["annotations"]:
        counts[annotation["image_id"]] += 1
    best = max(data["images"], key=lambda image: (counts[image["id"]], -image["id"]))
    return os.path.join(coco, "val2017", best["file_name"])


def main(argv=None):
    args = get_parser().parse_args(argv)
    start = time.time()
    sys.path.insert(0, REPO)  # tools/, shared with train_net.py
    from tools.engine import setup_config

    config = os.path.abspath(args.config_file or os.path.join(REPO, CONFIGS[args.task]))
    cfg = setup_config(config)
    name = args.task if args.config_file is None else os.path.splitext(os.path.basename(config))[0]
    out_dir = os.path.abspath(os.path.join(args.out, name))
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.abspath(args.datasets),
               PYTHONWARNINGS="ignore::FutureWarning")
    py = sys.executable

    step(1, f"dataset: a small COCO 2017-layout dataset under {args.datasets}/coco")
    run([py, "scripts/make_coco_dataset.py", "--root", args.datasets], env,
        "generating the dataset", "Check free disk space and write access to --datasets.")

    checkpoint = os.path.join(out_dir, "model_final.pth")
    solver_opts, max_iter = schedule(cfg, args.iters)
    if final_iteration(checkpoint) == max_iter - 1:
        step(2, f"evaluation of {checkpoint} ({max_iter} iterations done): "
                "train_net.py --eval-only (COCO metrics)")
        eval_dir = os.path.join(out_dir, "eval")
        output = run([py, "train_net.py", "--config-file", config, "--eval-only",
                      "MODEL.WEIGHTS", checkpoint, "OUTPUT_DIR", eval_dir], env,
                     "evaluation", "See the log above.")
    else:
        step(2, f"training {os.path.relpath(config, REPO)} for {max_iter} iterations on CPU, "
                "then its evaluation (COCO metrics; a progress line every 20 iterations)")
        eval_dir = out_dir
        output = run([py, "train_net.py", "--config-file", config, "--resume", *solver_opts,
                      "OUTPUT_DIR", out_dir], env,
                     "training", "See the log above; train_net.py names the file or key at fault.")
    results = parse_copypaste(output)

    step(3, "predictions drawn on a validation image (Detectron2 Visualizer)")
    image = pick_val_image(args.datasets)
    predictions_png = os.path.join(out_dir, "predictions.png")
    run([py, "scripts/demo.py", "--config-file", config, "--input", image, "--output",
         predictions_png, "MODEL.WEIGHTS", checkpoint], env, "the demo", "See above.")

    sampling_png = None
    if "dysample" in cfg.MODEL.BACKBONE.NAME:
        step(4, "where DySample samples (scripts/visualize_sampling.py)")
        sampling_png = os.path.join(out_dir, "sampling.png")
        run([py, "scripts/visualize_sampling.py", "--config-file", config, "--weights", checkpoint,
             "--input", image, "--output", sampling_png], env, "the sampling picture", "See above.")
    else:
        step(4, "sampling picture skipped: the config's FPN has no DySample")

    full = FULL_CONFIGS[args.task]
    print(
        "\n[quickstart] On real COCO (ImageNet-pretrained R-50 from the model zoo, 8 GPUs):\n"
        "  export DETECTRON2_DATASETS=/path/to/datasets   # holding coco/train2017, "
        "coco/annotations, ...\n"
        f"  python train_net.py --config-file {full} --num-gpus 8\n"
        f"  python train_net.py --config-file {full} --eval-only MODEL.WEIGHTS "
        "output/model_final.pth"
    )
    threads = torch.get_num_threads()
    print(f"\n[quickstart] done in {time.time() - start:.0f} s on {threads} CPU thread"
          + ("s" if threads > 1 else ""))
    for task, metrics in results.items():
        shown = ", ".join(f"{k} {v:.1f}" for k, v in list(metrics.items())[:3])
        print(f"[quickstart] {task}: {shown}")
    print(f"[quickstart] checkpoint:  {checkpoint}")
    print(f"[quickstart] log:         {os.path.join(eval_dir, 'log.txt')}")
    print(f"[quickstart] evaluation:  {os.path.join(eval_dir, 'inference')}")
    print(f"[quickstart] predictions: {predictions_png}")
    if sampling_png:
        print(f"[quickstart] sampling:    {sampling_png}")


if __name__ == "__main__":
    try:
        main()
    except StepFailed as e:
        sys.exit(f"\n[quickstart] ERROR: {e}")
