#!/usr/bin/env python
"""
Prove the mmdet -> Detectron2 converter right against mmdetection itself (not a dependency of
the project: it builds its own environment).

    python scripts/verify_mmdet_equivalence.py [--workdir DIR] [--cases a,b] [--record-fixture]

1. creates .venv-mmdet (scripts/mmdet_equivalence/setup_env.py: torch 2.14.1, mmengine,
   mmcv 2.1.0 built from source, mmdet 3.3.0) unless it is ready;
2. there (mmdet_side.py): builds Faster R-CNN, Mask R-CNN and Panoptic FPN with mmdet's FPN
   (nearest) or the authors' FPN_UPSAMPLE + DySample / DySample+, random weights, saves mmdet
   checkpoints and every stage of their outputs on images of several sizes;
3. converts each checkpoint with scripts/convert_mmdet_checkpoint.py (project environment),
   and checks that mismatched checkpoint/config pairs are refused;
4. runs the converted models in Detectron2 (d2_side.py) and compares stage by stage;
5. prints a summary table and writes DIR/report.json. Exit status 1 if a check failed.

Tensors cross between the two interpreters only as files (torch.save).
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "mmdet_equivalence"))
from cases import CASES, REFUSALS  # noqa: E402

FIXTURE = os.path.join(REPO, "tests", "fixtures", "mmdet_keys_rcnn.json")
FEATURE_RTOL = 1e-4


def log(msg):
    print(f"[verify] {msg}", flush=True)


def run(cmd, **kwargs):
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, cwd=REPO, **kwargs)


def config_file(project_py, config):
    """The path of a config name as dysample_d2.model_zoo finds it (this project's configs,
    then Detectron2's model zoo), asked of the project's interpreter."""
    return subprocess.run(
        [project_py, "-c", "import sys; from dysample_d2 import model_zoo; "
         "print(model_zoo.get_config_file(sys.argv[1]))", config],
        check=True, capture_output=True, text=True).stdout.strip()


def convert_cmd(project_py, workdir, ckpt_case, config, opts, out_name="d2.pth"):
    cmd = [project_py, os.path.join(HERE, "convert_mmdet_checkpoint.py"),
           os.path.join(workdir, ckpt_case, "mmdet.pth"),
           os.path.join(workdir, ckpt_case, out_name),
           "--config-file", config_file(project_py, config)]
    return cmd + list(opts or ())


def check_image(name, res):
    """The pass/fail criteria of one image of one case."""
    failures = []
    required = ["input", "backbone", "fpn", "rpn_head", "box_head_on_mmdet_rois"]
    if name.startswith(("mask", "panoptic")):
        required.append("mask_head_on_mmdet_rois")
    if name.startswith("panoptic"):
        required += ["semantic_logits", "panoptic"]
    failures += [f"{stage} was not compared" for stage in required if stage not in res]
    for stage in ("input", "backbone", "fpn", "rpn_head", "box_head_on_mmdet_rois",
                  "mask_head_on_mmdet_rois", "semantic_logits"):
        if stage in res and res[stage].get("max_rel", 1.0) > FEATURE_RTOL:
            failures.append(f"{stage} max_rel {res[stage].get('max_rel')}")
    det = res["detections"]
    if det["matched"] < 0.98 * max(det["mmdet"], det["d2"]):
        failures.append(f"detections matched {det['matched']} of {det['mmdet']}/{det['d2']}")
    if "panoptic" in res and res["panoptic"]["pixel_category_agreement"] < 0.999:
        failures.append(f"panoptic agreement {res['panoptic']['pixel_category_agreement']}")
    return failures


def fmt(d):
    return "-" if d is None else f"{d['max_abs']:.1e} / {d['max_rel']:.1e}"


def summarize(workdir, cases, refusals):
    rows, failures = [], []
    header = ("| case | image | input | backbone | FPN | RPN head | proposals: same rank / in set "
              "| box head | detections matched; max abs diff | mask head | masks differing px | "
              "semantic | panoptic agree |")
    rows += [header, "|" + "---|" * 13]
    for name in cases:
        with open(os.path.join(workdir, name, "compare.json")) as f:
            for res in json.load(f):
                det, props = res["detections"], res["proposals"]
                masks = (f"{det['mask_pixels_differing']}/{det['mask_pixels_total']}"
                         if "mask_pixels_total" in det else "-")
                pan = res.get("panoptic", {}).get("pixel_category_agreement")
                rows.append(
                    f"| {name} | {res['size'][0]}x{res['size'][1]} | {fmt(res['input'])} | "
                    f"{fmt(res['backbone'])} | {fmt(res['fpn'])} | {fmt(res['rpn_head'])} | "
                    f"{props['d2'] - props['same_rank_iou_below_0.999']} / "
                    f"{props['d2'] - props['not_in_mmdet_set']} of {props['mmdet']} | "
                    f"{fmt(res['box_head_on_mmdet_rois'])} | "
                    f"{det['matched']}/{det['mmdet']} (d2 {det['d2']}); box "
                    f"{det.get('box', {}).get('max_abs', 0):.0e}, score "
                    f"{det.get('score', {}).get('max_abs', 0):.0e} | "
                    f"{fmt(res.get('mask_head_on_mmdet_rois'))} | {masks} | "
                    f"{fmt(res.get('semantic_logits'))} | "
                    f"{'-' if pan is None else f'{pan:.5f}'} |")
                failures += [f"{name} {res['size']}: {x}" for x in check_image(name, res)]
    agnostic = []
    for name in cases:
        with open(os.path.join(workdir, name, "compare.json")) as f:
            for res in json.load(f):
                if "panoptic_vs_mmdet_class_agnostic_nms" in res:
                    agnostic.append(f"{name} {res['size'][0]}x{res['size'][1]}: "
                                    f"{res['panoptic_vs_mmdet_class_agnostic_nms']}")
    if agnostic:
        rows += ["", "Detectron2 (per-class NMS) vs mmdet's panoptic recipe (class-agnostic NMS):"]
        rows += [f"- {line}" for line in agnostic]
    for entry in refusals:
        if not entry["refused"]:
            failures.append(f"not refused: {entry['checkpoint']} with {entry['config']}")
    return "\n".join(rows), failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--workdir", default=os.path.join(REPO, "output", "mmdet_equivalence"),
                        help="checkpoints, outputs and report.json "
                        "(default output/mmdet_equivalence)")
    parser.add_argument("--venv", default=os.path.join(REPO, ".venv-mmdet"))
    parser.add_argument("--project-python",
                        default=os.environ.get("DYSAMPLE_D2_PYTHON",
                                               os.path.join(REPO, ".venv", "bin", "python")))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--record-fixture", action="store_true",
                        help=f"also write the mmdet key names/shapes to {FIXTURE}")
    parser.add_argument("--skip-setup", action="store_true")
    parser.add_argument("--reuse-mmdet-outputs", action="store_true",
                        help="skip the mmdet side where every case's checkpoint and outputs "
                        "are already in --workdir (a rerun of the Detectron2 side)")
    args = parser.parse_args(argv)
    start = time.time()
    cases = args.cases.split(",")
    os.makedirs(args.workdir, exist_ok=True)
    mmdet_py = os.path.join(args.venv, "bin", "python")
    if not args.skip_setup:
        run([sys.executable, os.path.join(HERE, "mmdet_equivalence", "setup_env.py"),
             "--venv", args.venv], check=True)
    fixture = FIXTURE if args.record_fixture else os.path.join(args.workdir, "mmdet_keys.json")
    recorded = all(os.path.isfile(os.path.join(args.workdir, name, "mmdet_out.pt"))
                   for name in cases)
    if args.reuse_mmdet_outputs and recorded:
        log(f"reusing the mmdet checkpoints and outputs in {args.workdir}")
    else:
        run([mmdet_py, os.path.join(HERE, "mmdet_equivalence", "mmdet_side.py"), args.workdir,
             "--cases", args.cases, "--fixture", fixture], check=True)

    conversions = {}
    for name in cases:
        case = CASES[name]
        proc = run(convert_cmd(args.project_python, args.workdir, name, case["config"],
                               case.get("opts")), capture_output=True, text=True)
        conversions[name] = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise SystemExit(f"conversion of {name} failed:\n{proc.stderr}")
    refusals = []
    for ckpt_case, config, opts, expected in REFUSALS:
        if ckpt_case not in cases:
            continue
        proc = run(convert_cmd(args.project_python, args.workdir, ckpt_case, config, opts,
                               out_name="refused.pth"), capture_output=True, text=True)
        refused = proc.returncode == 2 and expected in proc.stderr
        refusals.append({"checkpoint": ckpt_case, "config": config, "refused": refused,
                         "expected_in_message": expected,
                         "message_head": "\n".join(proc.stderr.splitlines()[:6])})
        log(f"refusal {ckpt_case} with {config}: {'ok' if refused else 'NOT REFUSED'}")

    run([args.project_python, os.path.join(HERE, "mmdet_equivalence", "d2_side.py"),
         args.workdir, "--cases", args.cases], check=True)
    table, failures = summarize(args.workdir, cases, refusals)
    with open(os.path.join(args.workdir, "resize.json")) as f:
        misc = json.load(f)
    resize, classes = misc["resize"], misc["classes"]
    failures += [f"class lists: {k} is False" for k, v in classes.items() if not v]
    versions = subprocess.run(
        [mmdet_py, "-c", "import torch, mmcv, mmdet, mmengine; print(f'torch {torch.__version__}"
         ", mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmengine {mmengine.__version__}')"],
        capture_output=True, text=True).stdout.strip()
    report = {"versions": versions, "seconds": round(time.time() - start), "cases": cases,
              "refusals": refusals, "resize": resize, "classes": classes,
              "failures": failures,
              "conversions": conversions, "table": table}
    with open(os.path.join(args.workdir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(table)
    print("\nresize (Detectron2 PIL vs mmdet cv2 bilinear, uint8):")
    for entry in resize:
        print("  ", entry)
    print(f"class lists (mmdet vs Detectron2 metadata): {classes}")
    for entry in refusals:
        print(f"refused {entry['checkpoint']} with {entry['config']}: {entry['refused']}")
    print(f"\n{versions}; {report['seconds']} s; report: {args.workdir}/report.json")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
