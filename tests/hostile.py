"""Hostile fake caches for the dashboard tests: names that try to inject Markdown or HTML.

``make_hostile`` copies a fake cache (``cityviz.fake_cache``) and rewrites its city, object,
model, data-set and cluster names, so no binary test data is committed. Used by
tests/test_ui_hostile.py (AppTest) and tests/browser/test_injection.py (a real browser).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

PLANTED_URL = "http://127.0.0.1:9/x.png"
CITY_A = f"![b]({PLANTED_URL}) <img src=x onerror=alert(1)> **bold**"
CITY_B = "[l](javascript:alert(1)) :red[x] $x^2$ <b>x</b>\nline two " + "long" * 60
OBJECT = "<b>x</b> [o](http://127.0.0.1:9/o) :red[o]"
DISPLAY = "<b>m</b> ![i](http://127.0.0.1:9/m.png)"
CLUSTER = "[c](http://127.0.0.1:9/c) <b>c</b> **c**"
# Markup that must never reach a Markdown element or a Plotly label verbatim.
MARKUP = (
    "![b](", "<img", "**bold**", "[l](", "javascript:", ":red[", "$x^2$", "<b>x</b>", "<b>m</b>",
    "![i](", "[o](", "[c](", "<b>c</b>",
)  # fmt: skip


def copy_cache(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def make_hostile(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose city, object, model and cluster names are hostile."""
    root = copy_cache(src, dst)
    manifest = json.loads((root / "manifest.json").read_text())
    old = manifest["dataset"]["cities"]
    rename = dict(zip(old, [CITY_A, CITY_B], strict=True))
    ds = manifest["dataset"]
    ds["cities"] = [rename[c] for c in old]
    ds["split_counts"] = {rename[c]: v for c, v in ds["split_counts"].items()}
    ds["discriminative"] = {rename[c]: v for c, v in ds["discriminative"].items()}
    ds["source"] = DISPLAY
    for m in manifest["models"]:
        m["display"] = f"{DISPLAY} {m['model_id']}"
    (root / "manifest.json").write_text(json.dumps(manifest))

    names = json.loads((root / "classes.json").read_text())
    planted = {o for objs in ds["discriminative"].values() for o in objs}
    hostile_names = {o: f"{OBJECT} {i}" for i, o in enumerate(sorted(planted))}
    names = [hostile_names.get(n, n) for n in names]
    (root / "classes.json").write_text(json.dumps(names))
    ds["discriminative"] = {
        c: [hostile_names.get(o, o) for o in objs] for c, objs in ds["discriminative"].items()
    }
    (root / "manifest.json").write_text(json.dumps(manifest))

    images = pd.read_parquet(root / "images.parquet")
    images["city"] = images["city"].map(rename)
    images.to_parquet(root / "images.parquet", index=False)
    rpc = pd.read_parquet(root / "stats/rpc.parquet")
    rpc["city"] = rpc["city"].map(rename)
    rpc["object"] = rpc["object"].map(lambda o: hostile_names.get(o, o))
    rpc.to_parquet(root / "stats/rpc.parquet", index=False)
    for model in (m["model_id"] for m in manifest["models"]):
        path = root / f"embed/{model}.parquet"
        emb = pd.read_parquet(path)
        emb["cluster_label"] = [f"{CLUSTER} {k}" for k in emb["cluster"]]
        emb["dominant"] = emb["dominant"].map(lambda o: hostile_names.get(o, o))
        emb.to_parquet(path, index=False)
    return root
