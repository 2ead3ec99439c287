"""Named, coloured and merged classes: the legend, the `classes` command and every output."""

import hashlib
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio
import torch

from segunify_core.errors import SegUnifyError
from segunify_core.files.model_file import load_model, read_model_file, rewrite_model_legend, save_model, write_safetensors
from segunify_core.method.legend import Legend, class_colours, parse_edits
from segunify_core.method.model import ModelConfig, SegUnifyModel
from segunify_core.synthetic import make_scene, write_geotiff

CLI = [sys.executable, "-m", "segunify_cli"]


def edited(n=6, names=(), merges=(), colours=()):
    return Legend.default(n).edit(*_args(names, merges, colours))


def _args(names, merges, colours):
    named, merged, coloured = parse_edits(names, merges, colours)
    return named, coloured, merged


def test_default_legend_is_todays_names_and_colours():
    legend = Legend.default(6)
    assert legend.names == [f"class {i}" for i in range(1, 7)] and legend.is_identity
    assert [c.colour for c in legend.classes] == [tuple(map(int, c)) for c in class_colours(6)]
    assert legend.to_metadata() is None, "a model without a legend stays without one"


def test_merge_renumbers_by_lowest_cluster():
    legend = edited(names=["1=road"], merges=["2,3=roof", "4,5=vegetation"], colours=["6=#C0392B"])
    assert legend.names == ["road", "roof", "vegetation", "class 6"]
    assert [c.clusters for c in legend.classes] == [(0,), (1, 2), (3, 4), (5,)]
    assert legend.classes[3].colour == (0xC0, 0x39, 0x2B)
    assert legend.classes[1].colour == legend.classes[1].colour == tuple(map(int, class_colours(6)[1]))
    assert not legend.is_identity
    # Non-adjacent members: the merged class takes its lowest member's place, the rest move up.
    apart = edited(5, merges=["5,2=x"])
    assert apart.names == ["class 1", "x", "class 3", "class 4"]
    assert [c.clusters for c in apart.classes] == [(0,), (1, 4), (2,), (3,)]
    # Ids of a second edit are the edited legend's ids; merges compose.
    again = legend.edit({}, {}, [([1, 4], "other")])
    assert again.names == ["other", "roof", "vegetation"] and again.classes[0].clusters == (0, 5)
    assert Legend.from_metadata(again.to_metadata(), 6) == again


@pytest.mark.parametrize("kw, message", [
    (dict(names=["9=x"]), "Class 9 does not exist: this model has classes 1..6; fix the class names (--name)"),
    (dict(colours=["2=red"]), "Colour 'red' for class 2 is not a hex colour like #c0392b"),
    (dict(merges=["2,2=x"]), "Merging needs at least two different classes"),
    (dict(merges=["1,2=a", "2,3=b"]), "Class 2 is in two merges"),
    (dict(merges=["1,2=a"], names=["1=b"]), "Class 1 is merged (--merge); name the merged class there"),
    (dict(names=["1=a", "2=a"]), "Two classes would be named 'a'"),
    (dict(names=["road"]), "'road' is not of the form 3=roof (class name, --name)"),
    (dict(merges=["1,2=a"], colours=["1=#000000", "2=#ffffff"]), "were given different colours"),
])
def test_bad_edits_are_one_clear_sentence(kw, message):
    with pytest.raises(SegUnifyError) as err:
        edited(**kw)
    assert message in str(err.value) and str(err.value).replace("e.g. ", "").count(". ") == 0


def test_merged_model_adds_the_probabilities_of_its_clusters():
    torch.manual_seed(0)
    model = SegUnifyModel(ModelConfig(classes=4, extra_clusters=2, code_dim=8, feature_dim=16)).eval()
    code = torch.randn(2, 8, 3, 4)
    before = model.log_probs_from_code(code, (12, 16))
    model.legend = model.legend.edit({3: "roof"}, {}, [([4, 5], "vegetation")])
    renamed_only = Legend.default(6).edit({3: "roof"})
    assert renamed_only.is_identity, "names and colours alone leave the probabilities as they are"
    after = model.log_probs_from_code(code, (12, 16))
    assert after.shape == (2, 5, 12, 16)
    p = before.exp()
    expected = torch.stack([p[:, 0], p[:, 1], p[:, 2], p[:, 3] + p[:, 4], p[:, 5]], 1).log()
    torch.testing.assert_close(after, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(after.exp().sum(1), torch.ones(2, 12, 16))


def test_classes_command_lists_and_writes_a_new_model(tiny_model, tmp_path):
    digest = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    listed = subprocess.run(CLI + ["classes", str(tiny_model)], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["id", "name", "colour", "share", "clusters"] and len(lines) == 4
    shares = [float(line.split("%")[0].split()[-1]) for line in lines[1:]]
    assert abs(sum(shares) - 100) < 0.5, "shares of the training pixels add up to 100 %"
    new = tmp_path / "named.safetensors"
    run = subprocess.run(CLI + ["classes", str(tiny_model), "-o", str(new), "--merge", "2,3=land", "--name", "1=water",
                                "--colour", "1=#0000ff", "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)["classes"]
    assert [(r["id"], r["name"], r["colour"], r["clusters"]) for r in rows] == [
        (1, "water", "#0000ff", [1]), (2, "land", "#377eb8", [2, 3])]
    assert rows[1]["share"] == pytest.approx((shares[1] + shares[2]) / 100, abs=0.002)
    assert hashlib.sha256(tiny_model.read_bytes()).hexdigest() == digest, "the original model is untouched"
    meta, _ = read_model_file(new)
    assert meta["legend"]["classes"][1] == {"name": "land", "colour": "#377eb8", "clusters": [1, 2]}
    for args, message in ((["-o", str(tiny_model), "--name", "1=x"], "never modified in place"),
                          (["-o", str(new), "--name", "1=x"], "already exists; choose another output or allow replacing it (--overwrite)"),
                          (["--name", "1=x"], "need a new model file (-o NEW)"),
                          (["-o", str(tmp_path / "x.safetensors"), "--colour", "1=#12"], "not a hex colour")):
        bad = subprocess.run(CLI + ["classes", str(tiny_model), *args], capture_output=True, text=True, timeout=120)
        assert bad.returncode != 0 and message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
    assert not (tmp_path / "x.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["named.safetensors"], "no partial files"


def test_older_models_show_unknown_shares(tiny_model, tmp_path):
    meta, tensors = read_model_file(tiny_model)
    del meta["training"]["cluster_shares"]
    old = tmp_path / "old.safetensors"
    from pathlib import Path

    write_safetensors(Path(old), tensors, meta)
    out = subprocess.run(CLI + ["classes", str(old)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.count("unknown") == 3, out.stdout


def test_round_trip_on_a_sample(samples, tiny_backbone, tmp_path):
    """Self-fit 6 clusters on a real orthophoto, merge to 4 named classes; every output shows the
    4 names and evaluation scores 4 classes."""
    from rasterio.shutil import copy as gdal_copy

    from segunify_core.files.vectorize import vectorize
    from segunify_core.job.segment import SegmentOptions, SelfFitOptions, segment_raster
    from segunify_core.training.evaluation import evaluate

    src = samples / "rasterio/cogeo.tif"
    options = SegmentOptions(window=224, stride=160, flip=False)
    fit = SelfFitOptions(classes=6, steps=30, max_windows=12, cache_dir=tmp_path)
    report = segment_raster(src, tmp_path / "six.tif", None, options, fit=fit, backbone=tiny_backbone)
    six = tmp_path / "six.safetensors"
    save_model(report.model, six)
    digest = hashlib.sha256(six.read_bytes()).hexdigest()
    names = ["road", "roof", "vegetation", "water"]
    edit = dict(zip(("names", "colours", "merges"), _args(["1=road", "6=water"], ["2,3=roof", "4,5=vegetation"],
                                                          ["6=#c0392b"]), strict=True))
    rewrite_model_legend(six, tmp_path / "four.safetensors", edit)
    assert hashlib.sha256(six.read_bytes()).hexdigest() == digest
    four = load_model(tmp_path / "four.safetensors", backbone=tiny_backbone)
    assert four.legend.names == names and four.n_classes == 4

    out = tmp_path / "four.tif"
    segment_raster(src, out, four, SegmentOptions(window=224, stride=160, flip=False, preview=tmp_path / "p.png"))
    with rasterio.open(out) as ds:
        assert ds.read(1).max() <= 4
        assert ds.colormap(1)[4] == (0xC0, 0x39, 0x2B, 255)
    # GDAL (rasterio's own) reads the category names and the attribute table beside the GeoTIFF.
    gdal_copy(str(out), str(tmp_path / "four.vrt"), driver="VRT")
    band = ET.parse(tmp_path / "four.vrt").getroot().find("VRTRasterBand")
    assert [c.text or "" for c in band.find("CategoryNames")] == [""] + names
    rat_rows = band.find("GDALRasterAttributeTable").findall("Row")
    assert [[f.text for f in row] for row in rat_rows][3] == ["4", "water", "192", "57", "43"]
    qml = out.with_suffix(".qml").read_text()
    assert [e.get("label") for e in ET.fromstring(qml.split("\n", 1)[1]).iter("paletteEntry")] == names

    import geopandas as gpd
    from PIL import Image

    vectorize(out, tmp_path / "four.gpkg")
    polys = gpd.read_file(tmp_path / "four.gpkg")
    assert set(polys["class_name"]) <= set(names) and len(set(polys["class_name"])) >= 2
    assert all(names[i - 1] == n for i, n in zip(polys["class_id"], polys["class_name"], strict=True))
    preview = Image.open(tmp_path / "p.png")
    assert [line.split("\t")[1] for line in preview.text["legend"].splitlines()] == names
    pixels = np.asarray(preview.convert("RGB"))
    legend_rows = pixels[1024:]  # below the image / classes / overlay strip
    assert legend_rows.shape[0] > 0 and ((legend_rows == [0xC0, 0x39, 0x2B]).all(-1)).sum() > 50

    (tmp_path / "eval" / "images").mkdir(parents=True)
    (tmp_path / "eval" / "labels").mkdir()
    img, labels = make_scene(224, seed=1)
    write_geotiff(tmp_path / "eval" / "images" / "s.tif", img)
    write_geotiff(tmp_path / "eval" / "labels" / "s.tif", labels[None].astype("uint8"))
    scores, _ = evaluate(four, tmp_path / "eval", flip=False)
    assert np.asarray(scores.confusion_matrix).shape == (4, 3), "the 4 merged classes are scored"
    assert np.asarray(scores.confusion_matrix).sum() == 224 * 224
