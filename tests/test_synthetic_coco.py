"""The synthetic COCO generator: layout, formats, Detectron2 builtin names, determinism, CLI."""

import filecmp
import glob
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from panopticapi.utils import rgb2id
from PIL import Image
from pycocotools.coco import COCO

from synthetic_data import DatasetValidationError, generate_synthetic_coco
from synthetic_data import coco as synthetic_coco
from synthetic_data.draw import THING_STYLES, rasterize_polygon, render_scene

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(REPO, "scripts", "make_coco_dataset.py")
ARGS = dict(train_images=4, val_images=2, size=128, seed=0)
THING_IDS = {c["name"]: c["id"] for c in COCO_CATEGORIES if c["isthing"] == 1}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    coco_dir, reused = generate_synthetic_coco(str(root), **ARGS)
    assert coco_dir == os.path.join(str(root), "coco") and not reused
    return str(root)


def _load(path):
    with open(path) as f:
        return json.load(f)


def _pan_ids(path):
    return rgb2id(np.asarray(Image.open(path).convert("RGB"), dtype=np.uint32))


def test_layout(root):
    coco = os.path.join(root, "coco")
    for split, n, first in (("train2017", 4, 1), ("val2017", 2, 900001)):
        stems = [f"{first + i:012d}" for i in range(n)]
        for d, ext in (
            (split, "jpg"),
            (f"panoptic_{split}", "png"),
            (f"panoptic_stuff_{split}", "png"),
        ):
            assert sorted(os.listdir(os.path.join(coco, d))) == [f"{s}.{ext}" for s in stems]
        for kind in ("instances", "panoptic"):
            assert os.path.isfile(os.path.join(coco, "annotations", f"{kind}_{split}.json"))
    assert os.path.isfile(os.path.join(coco, synthetic_coco.MANIFEST_NAME))
    assert not glob.glob(os.path.join(root, ".coco-synthetic-*"))  # no temporary dirs left


def test_instances_load_with_pycocotools(root):
    for split in ("train2017", "val2017"):
        coco = COCO(os.path.join(root, "coco", "annotations", f"instances_{split}.json"))
        cats = coco.loadCats(coco.getCatIds())
        assert [(c["id"], c["name"]) for c in cats] == [
            (c["id"], c["name"]) for c in COCO_CATEGORIES if c["isthing"] == 1
        ]
        assert len(cats) == 80
        used = {a["category_id"] for a in coco.dataset["annotations"]}
        assert used <= {THING_IDS[n] for n in THING_STYLES}
        for img in coco.dataset["images"]:
            assert (img["width"], img["height"]) == (128, 128)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
            assert len(anns) >= 1
            for a in anns:
                x, y, w, h = a["bbox"]
                assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 128 and y + h <= 128
                assert a["area"] > 0 and a["iscrowd"] == 0


def test_masks_boxes_and_drawn_pixels_agree(root):
    coco_dir = os.path.join(root, "coco")
    coco = COCO(os.path.join(coco_dir, "annotations", "instances_train2017.json"))
    pan = {
        a["image_id"]: a
        for a in _load(os.path.join(coco_dir, "annotations", "panoptic_train2017.json"))[
            "annotations"
        ]
    }
    sizes = []
    for ann in coco.dataset["annotations"]:
        mask = coco.annToMask(ann).astype(bool)  # the polygon, rasterized as COCO tools do
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["area"] == mask.sum()
        # the drawn object as a panoptic segment: same category, mask IoU 1
        p = pan[ann["image_id"]]
        ids = _pan_ids(os.path.join(coco_dir, "panoptic_train2017", p["file_name"]))
        ious = [
            (ids == s["id"]).__and__(mask).sum() / ((ids == s["id"]) | mask).sum()
            for s in p["segments_info"]
            if s["category_id"] == ann["category_id"]
        ]
        assert max(ious) > 0.999
        sizes.append(max(ann["bbox"][2:]))
    assert min(sizes) <= 16 and max(sizes) >= 32  # small and large objects


def test_render_scene_paints_exactly_the_masks():
    rng = np.random.default_rng(3)
    for _ in range(5):
        image, stuff, objects = render_scene(rng, 96)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8 and stuff.shape == (96, 96)
        union = np.zeros((96, 96), int)
        for obj in objects:
            assert np.array_equal(rasterize_polygon(obj["polygon"], 96), obj["mask"])
            union += obj["mask"]
            color = np.float32(THING_STYLES[obj["name"]][1])
            inside = image[obj["mask"]].astype(np.float32).mean(axis=0)
            assert np.linalg.norm(inside - color) < 45  # painted with its class colour
        assert union.max() <= 1  # no occlusion: masks are disjoint


def test_panoptic_pngs_and_semantic_conversion(root):
    coco_dir = os.path.join(root, "coco")
    cat_by_id = {c["id"]: c for c in COCO_CATEGORIES}
    # prepare_panoptic_fpn.py: stuff ids in COCO_CATEGORIES order -> 1..53, things -> 0
    stuff_ids = [c["id"] for c in COCO_CATEGORIES if c["isthing"] == 0]
    sem_of = {cid: i + 1 for i, cid in enumerate(stuff_ids)}
    sem_of.update({c["id"]: 0 for c in COCO_CATEGORIES if c["isthing"] == 1})
    for split in ("train2017", "val2017"):
        data = _load(os.path.join(coco_dir, "annotations", f"panoptic_{split}.json"))
        assert [(c["id"], c["isthing"]) for c in data["categories"]] == [
            (c["id"], c["isthing"]) for c in COCO_CATEGORIES
        ]
        for ann in data["annotations"]:
            ids = _pan_ids(os.path.join(coco_dir, f"panoptic_{split}", ann["file_name"]))
            segs = ann["segments_info"]
            assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in segs}
            assert any(cat_by_id[s["category_id"]]["isthing"] == 0 for s in segs)
            expected = np.full(ids.shape, 255, np.uint8)
            for s in segs:
                assert s["area"] == (ids == s["id"]).sum() and s["iscrowd"] == 0
                expected[ids == s["id"]] = sem_of[s["category_id"]]
            sem_file = os.path.join(coco_dir, f"panoptic_stuff_{split}", ann["file_name"])
            with Image.open(sem_file) as im:
                assert im.mode == "L"
                assert np.array_equal(np.asarray(im), expected)


def test_detectron2_builtin_names_load_it(root):
    code = textwrap.dedent("""
        import json, os
        from detectron2.config import get_cfg
        from detectron2.data import DatasetCatalog, DatasetMapper
        out = {}
        for name in ("coco_2017_train", "coco_2017_val", "coco_2017_val_panoptic_separated",
                     "coco_2017_val_panoptic"):
            dicts = DatasetCatalog.get(name)
            d = dicts[0]
            files = [v for k, v in d.items() if k.endswith("file_name")]
            n_objects = sum(len(x.get("annotations", x.get("segments_info", []))) for x in dicts)
            out[name] = {"n": len(dicts), "keys": sorted(d), "file": d["file_name"],
                         "files_exist": all(map(os.path.isfile, files)), "n_objects": n_objects}
        cfg = get_cfg()
        cfg.MODEL.MASK_ON = True
        cfg.INPUT.MIN_SIZE_TRAIN = (128,)
        d = DatasetCatalog.get("coco_2017_train_panoptic_separated")[0]
        sample = DatasetMapper(cfg, is_train=True)(d)  # default INPUT.MASK_FORMAT: polygon
        inst = sample["instances"]
        out["mapped"] = {"image": list(sample["image"].shape), "n": len(inst),
                         "sem_seg": list(sample["sem_seg"].shape),
                         "masks": type(inst.gt_masks).__name__}
        print("RESULT" + json.dumps(out))
        """)
    env = dict(os.environ, DETECTRON2_DATASETS=root)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    coco_dir = os.path.join(root, "coco")
    assert out["coco_2017_train"]["n"] == 4 and out["coco_2017_val"]["n"] == 2
    assert out["coco_2017_val"]["file"] == os.path.join(coco_dir, "val2017", "000000900001.jpg")
    sep, std = out["coco_2017_val_panoptic_separated"], out["coco_2017_val_panoptic"]
    assert sep["n"] == 2 and "sem_seg_file_name" in sep["keys"] and "annotations" in sep["keys"]
    assert std["n"] == 2 and "pan_seg_file_name" in std["keys"]
    assert all(v["files_exist"] and v["n_objects"] > 0 for k, v in out.items() if k != "mapped")
    mapped = out["mapped"]
    assert mapped["n"] > 0 and mapped["masks"] == "PolygonMasks"
    assert mapped["image"][1:] == mapped["sem_seg"]


def _tree(coco_dir):
    return sorted(
        os.path.relpath(p, coco_dir)
        for p in glob.glob(os.path.join(coco_dir, "**", "*.*"), recursive=True)
    )


def test_deterministic_for_a_seed(root, tmp_path):
    a = os.path.join(root, "coco")
    b, _ = generate_synthetic_coco(str(tmp_path / "again"), **ARGS)
    assert _tree(a) == _tree(b)
    for rel in _tree(a):
        if rel.endswith(".json"):
            assert filecmp.cmp(os.path.join(a, rel), os.path.join(b, rel), shallow=False), rel
        else:
            assert np.array_equal(
                np.asarray(Image.open(os.path.join(a, rel))),
                np.asarray(Image.open(os.path.join(b, rel))),
            ), rel
    c, _ = generate_synthetic_coco(str(tmp_path / "other"), **dict(ARGS, seed=1))
    rel = "annotations/instances_train2017.json"
    assert not filecmp.cmp(os.path.join(a, rel), os.path.join(c, rel), shallow=False)


def test_reuse_force_and_refusals(root, tmp_path, monkeypatch):
    manifest = os.path.join(root, "coco", synthetic_coco.MANIFEST_NAME)
    mtime = os.stat(manifest).st_mtime_ns
    assert generate_synthetic_coco(root, **ARGS)[1]  # reused, untouched
    assert os.stat(manifest).st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="other arguments"):
        generate_synthetic_coco(root, **dict(ARGS, size=96))
    with pytest.raises(ValueError, match="size"):
        generate_synthetic_coco(root, **dict(ARGS, size=32))

    new = str(tmp_path / "new")
    generate_synthetic_coco(new, **ARGS)
    coco_dir, reused = generate_synthetic_coco(new, **dict(ARGS, val_images=1), force=True)
    assert not reused and len(os.listdir(os.path.join(coco_dir, "val2017"))) == 1

    def broken(*args, **kwargs):
        raise DatasetValidationError("simulated failure")

    monkeypatch.setattr(synthetic_coco, "validate_coco_dir", broken)
    with pytest.raises(DatasetValidationError):  # interrupted: old dataset stays, no temp left
        generate_synthetic_coco(new, **ARGS, force=True)
    assert sorted(os.listdir(new)) == ["coco"] and synthetic_coco.read_manifest(coco_dir)

    foreign = tmp_path / "foreign"
    (foreign / "coco" / "train2017").mkdir(parents=True)  # e.g. the real COCO: never replaced
    with pytest.raises(FileExistsError, match="not written by this generator"):
        generate_synthetic_coco(str(foreign), **ARGS, force=True)


def _cli(*args):
    return subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "bad, name",
    [
        (["--train-images", "0"], "--train-images"),
        (["--val-images", "-3"], "--val-images"),
        (["--size", "32"], "--size"),
        (["--size", "big"], "--size"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path, bad, name):
    proc = _cli("--root", str(tmp_path), *bad)
    assert proc.returncode != 0
    assert f"argument {name}:" in proc.stderr
    assert not os.path.exists(tmp_path / "coco")


def test_cli_writes_then_reuses(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_coco_dataset", CLI)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    argv = ["--root", str(tmp_path), "--train-images", "2", "--val-images", "1", "--size", "64"]
    assert cli.main(argv) == 0
    assert "Wrote synthetic COCO dataset" in capsys.readouterr().out
    assert cli.main(argv) == 0
    assert "Reusing existing synthetic COCO dataset" in capsys.readouterr().out
    assert cli.main(argv + ["--size", "96"]) == 2  # other arguments, no --force
    assert "--force" in capsys.readouterr().err
    assert cli.main(argv + ["--size", "96", "--force"]) == 0
    with Image.open(tmp_path / "coco" / "val2017" / "000000900001.jpg") as im:
        assert im.size == (96, 96)
