"""The Live Grad-CAM page against hostile names and damaged cache parts (issue 9, faults 2 and 3).

Names from data (cities, classes, model display names, upload file names) must never reach a
Markdown element as markup; a damaged cache part disables only what depends on it, with one
sentence naming the file and the precompute command that rebuilds it.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import SafetensorError
from streamlit.testing.v1 import AppTest

from cityviz.fake_cache import make_fake_cache
from cityviz.models import checkpoint as ckpt
from cityviz.models.archs import build_model
from cityviz.store import CacheError

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "live.py")
HOSTILE = [
    "![b](http://127.0.0.1:9/x.png)",
    "<img src=x onerror=1>",
    "**b**",
    ":red[x]",
    "two\nlines",
    "L" * 300,
]
# Raw markup that must not survive unescaped into any Markdown element's source.
MARKUP = ("![b](", "<img", "**b**", ":red[", "two\nlines")
MARKDOWN_KINDS = ("markdown", "caption", "info", "warning", "error", "success", "subheader",
                  "title", "header", "text")  # fmt: skip


def jpeg(seed: int = 0, size: tuple[int, int] = (120, 90)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3)).astype(np.uint8)
    arr[: size[1] // 2] = (120, 170, 230)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def has_markup(text: str, bad: str) -> bool:
    """Whether ``bad`` occurs in Markdown source ``text`` with its first character unescaped."""
    return re.search(r"(?<!\\)" + re.escape(bad), text) is not None


def unescape(text: str) -> str:
    """Markdown source → the text a reader sees (backslash escapes removed)."""
    return re.sub(r"\\(.)", r"\1", text)


def markdown_sources(at: AppTest) -> list[str]:
    out = []
    for kind in MARKDOWN_KINDS:
        out += [str(el.value) for el in at.get(kind)]
    return out


def run_page(root: Path, *, sample: bool = False, name: str = "street.jpg") -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["cache_path"] = str(root)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if sample:
        at.radio(key="live_source").set_value("Sample from the test set").run()
    else:
        at.file_uploader(key="live_upload").set_value((name, jpeg(), "image/jpeg"))
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def predicted_models(at: AppTest) -> list[str]:
    return [unescape(m.value.split("**")[1]) for m in at.markdown if " predicts " in m.value]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_fake_cache(
        tmp_path_factory.mktemp("hostile") / "base",
        n_images=40,
        archs=("simple",),
        seeds=(0, 1),
        image_size=32,
        test_fraction=0.5,
        pool_size=8,
    )


@pytest.fixture
def cache(base, tmp_path) -> Path:
    """A private copy of the base cache, free to damage."""
    return Path(shutil.copytree(base, tmp_path / "cache"))


# --------------------------------------------------------------------------- fault 2: names


def make_hostile(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    n = len(manifest["dataset"]["cities"])
    cities = HOSTILE[:n]
    manifest["dataset"]["cities"] = cities
    for i, entry in enumerate(manifest["models"]):
        entry["display"] = HOSTILE[(i + 2) % len(HOSTILE)]
        side = root / f"{entry['checkpoint']}.json"
        meta = json.loads(side.read_text())
        meta["classes"] = cities
        side.write_text(json.dumps(meta))
    (root / "manifest.json").write_text(json.dumps(manifest))
    classes = json.loads((root / "classes.json").read_text())
    (root / "classes.json").write_text(json.dumps([HOSTILE[i % len(HOSTILE)] for i in
                                                   range(len(classes))]))  # fmt: skip
    import pandas as pd

    images = pd.read_parquet(root / "images.parquet")
    images["city"] = [cities[i] for i in images["city_idx"]]
    images.to_parquet(root / "images.parquet", index=False)


@pytest.mark.parametrize("sample", [False, True], ids=["upload", "sample"])
def test_hostile_names_never_reach_markdown_as_markup(cache, sample):
    make_hostile(cache)
    at = run_page(cache, sample=sample, name="![b](http://127.0.0.1:9/x.png)<img src=x>.jpg")
    sources = markdown_sources(at)
    for text in sources:
        for bad in MARKUP:
            assert not has_markup(text, bad), (bad, text)
    # the names are still there for the reader, escaped
    assert len(predicted_models(at)) == 2
    assert any("<img src=x onerror=1>" in unescape(t) or ":red[x]" in unescape(t)
               for t in sources)  # fmt: skip
    for chart in at.get("plotly_chart"):
        assert "<img" not in chart.proto.spec


# --------------------------------------------------------------------------- fault 3: parts


def damage_garbage(path: Path) -> None:
    path.write_bytes(b"\x00not what you expect" * 7)


def damage_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def damage_empty(path: Path) -> None:
    path.write_bytes(b"")


CHECKPOINT_DAMAGE = {
    "weights-garbage": ("safetensors", damage_garbage),
    "weights-truncated": ("safetensors", damage_truncate),
    "weights-empty": ("safetensors", damage_empty),
    "weights-missing": ("safetensors", lambda p: p.unlink()),
    "sidecar-not-json": ("json", damage_garbage),
    "sidecar-truncated": ("json", damage_truncate),
    "sidecar-missing": ("json", lambda p: p.unlink()),
    "sidecar-no-classes": ("json", lambda p: p.write_text(json.dumps({"arch": "simple",
                                                                      "input_size": 32}))),
    "sidecar-list": ("json", lambda p: p.write_text("[1, 2]")),
    "sidecar-unknown-arch": ("json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "arch": "alexnet"}))),
    "sidecar-bad-size": ("json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "input_size": "big"}))),
    "shape-mismatch": ("json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "classes": ["a", "b", "c"]}))),
    "other-arch-weights": ("json", lambda p: p.write_text(json.dumps(
        {**json.loads(p.read_text()), "arch": "simpler"}))),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CHECKPOINT_DAMAGE))
def test_load_checkpoint_raises_checkpoint_error_naming_the_file(cache, case):
    suffix, damage = CHECKPOINT_DAMAGE[case]
    stem = cache / "models" / "simple_s1"
    damage(stem.with_suffix("." + suffix))
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_checkpoint(stem)
    message = str(err.value)
    assert isinstance(err.value, CacheError)
    assert "simple_s1." in message and "--force --stages train" in message
    assert message.count("\n") == 0


@pytest.mark.parametrize("case", ["weights-garbage", "weights-truncated", "sidecar-not-json",
                                  "shape-mismatch"])  # fmt: skip
def test_one_damaged_checkpoint_disables_only_that_model(cache, case):
    suffix, damage = CHECKPOINT_DAMAGE[case]
    damage(cache / "models" / f"simple_s1.{suffix}")
    at = run_page(cache)
    assert predicted_models(at) == ["Simple · seed 0"]
    warnings = [unescape(w.value) for w in at.warning]
    assert any("simple_s1" in w and "--force --stages train" in w for w in warnings), warnings
    assert not at.error


def test_missing_weights_are_named_and_the_other_model_runs(cache):
    (cache / "models" / "simple_s0.safetensors").unlink()
    at = run_page(cache)
    assert predicted_models(at) == ["Simple · seed 1"]
    assert any("simple_s0.safetensors" in unescape(w.value) for w in at.warning)


PART_DAMAGE = {  # file → (damage, what must still be shown, mode)
    "embed/simple_s0_tsne.npz": (damage_garbage, "upload"),
    "embed/simple_s0_umap.npz": (damage_truncate, "upload"),
    "embed/simple_s0.parquet": (damage_garbage, "upload"),
    "thumbs/simple_s0/overlay/0000.jpg": (damage_truncate, "sample"),
    "classes.json": (damage_garbage, "sample"),
    "labels.npy": (damage_truncate, "sample"),
    "images.parquet": (damage_garbage, "upload"),
}


@pytest.mark.parametrize("rel", list(PART_DAMAGE))
def test_a_damaged_part_disables_only_what_depends_on_it(cache, rel):
    damage, mode = PART_DAMAGE[rel]
    damage(cache / rel)
    if rel == "embed/simple_s0_umap.npz":  # make the damaged map the one that is shown
        manifest = json.loads((cache / "manifest.json").read_text())
        manifest["config"]["embed_methods"] = ["umap"]
        (cache / "manifest.json").write_text(json.dumps(manifest))
    at = run_page(cache, sample=mode == "sample")
    assert predicted_models(at) == ["Simple · seed 0", "Simple · seed 1"]
    messages = [unescape(m.value) for m in [*at.error, *at.warning, *at.caption]]
    named = [m for m in messages if rel in m]
    assert named, messages
    assert all("--force --stages" in m or "--stages" in m for m in named)
    assert not [m for m in at.error if "could not be shown" in m.value]


@pytest.mark.parametrize("rel", ["ood/simple_s0.npz", "inputs/test.npy"])
@pytest.mark.parametrize("damage", [damage_garbage, damage_truncate])
def test_damaged_ood_reference_only_loses_the_caveat(cache, rel, damage):
    target = cache / rel
    target.parent.mkdir(exist_ok=True)
    if rel.endswith(".npy"):
        np.save(target, np.zeros((4, 32, 32, 3), dtype=np.uint8))
    else:
        np.savez(target, features=np.ones((3, 2)))
    damage(target)
    at = run_page(cache)
    assert predicted_models(at) == ["Simple · seed 0", "Simple · seed 1"]
    captions = [unescape(c.value) for c in at.caption]
    assert any(rel in c and "Cannot check" in c for c in captions), captions


# --------------------------------------------------------------------------- saving


def test_markup_check_itself():
    assert has_markup("see <img src=x>", "<img") and not has_markup("see \\<img", "<img")
    assert has_markup("**b** x", "**b**") and not has_markup("\\*\\*b\\*\\*", "**b**")


def test_save_checkpoint_wraps_a_failed_write_in_os_error(tmp_path, monkeypatch):
    model = build_model("simple", 2)
    meta = {"arch": "simple", "classes": ["a", "b"], "input_size": 32}

    def full_disk(state, path, metadata=None):
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(OSError, match=r"m\.safetensors.*disk full"):
        ckpt.save_checkpoint(tmp_path / "m", model, meta)
    assert not list(tmp_path.iterdir())  # nothing half-written under any name


def test_save_checkpoint_detects_a_silently_short_write(tmp_path, monkeypatch):
    model = build_model("simple", 2)
    meta = {"arch": "simple", "classes": ["a", "b"], "input_size": 32}
    real = ckpt.save_file

    def short(state, path, metadata=None):
        real(state, path, metadata=metadata)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) - 100])

    monkeypatch.setattr(ckpt, "save_file", short)
    with pytest.raises(OSError, match="shorter than its header"):
        ckpt.save_checkpoint(tmp_path / "m", model, meta)
    assert not (tmp_path / "m.safetensors").exists()


def test_save_then_load_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build_model("simpler", 3)
    ckpt.save_checkpoint(tmp_path / "m", model, {"arch": "simpler", "classes": ["a", "b", "c"],
                                                 "input_size": 32})  # fmt: skip
    loaded, meta = ckpt.load_checkpoint(tmp_path / "m")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(),
                                strict=True):  # fmt: skip
        assert k == k2 and torch.equal(v, v2)
    assert meta["format"] == "cityviz-model-1" and not loaded.training
