"""AppTest: the Compare-models page on a fake cache (AR matrix, claim, side-by-side browsing)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cityviz import stats
from cityviz.fake_cache import make_fake_cache
from cityviz.store import Cache

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "compare.py")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return make_fake_cache(
        tmp_path_factory.mktemp("compare") / "cache",
        n_images=100,
        archs=("simple", "resnet18"),
        seeds=(0, 1),
        image_size=48,
        test_fraction=0.5,
        pool_size=24,
        with_models=False,
    )


def run_page(root: Path) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["cache_path"] = str(root)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def heatmap_z(at: AppTest) -> np.ndarray:
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    z = spec["data"][0]["z"]
    if isinstance(z, dict):  # plotly's typed-array encoding
        shape = tuple(int(s) for s in str(z["shape"]).split(","))
        return np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"]).reshape(shape)
    return np.asarray(z, dtype=float)


def test_ar_matrix_is_symmetric_with_ar_summary_values(cache_dir):
    at = run_page(cache_dir)
    cache = Cache(cache_dir)
    summary = cache.ar_summary()
    z = heatmap_z(at)
    ids = cache.model_ids
    assert z.shape == (len(ids), len(ids))
    np.testing.assert_array_equal(z, z.T)
    assert np.diag(z).tolist() == [0.0] * len(ids)
    for a, b, v in zip(summary["model_a"], summary["model_b"], summary["mean_ar"], strict=True):
        assert z[ids.index(a), ids.index(b)] == v
    table = at.dataframe[0].value
    assert len(table) == len(summary) == len(ids) * (len(ids) - 1) // 2
    np.testing.assert_array_equal(table["mean AR"].to_numpy(), summary["mean_ar"].to_numpy())


def test_claim_sentence_matches_arch_vs_seed(cache_dir):
    at = run_page(cache_dir)
    verdict = json.loads((Path(cache_dir) / "stats/arch_vs_seed.json").read_text())
    box = at.success if verdict["claim_holds"] else at.warning
    assert len(box) == 1
    assert f"{verdict['mean_arch']:.4f}" in box[0].value
    assert f"{verdict['mean_seed']:.4f}" in box[0].value
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Difference"] == f"{verdict['diff']:.4f}"


def test_browse_most_disagreement_first(cache_dir):
    at = run_page(cache_dir)
    at.selectbox(key="cmp_a").set_value("simple_s0").run()
    at.selectbox(key="cmp_b").set_value("resnet18_s1").run()
    at.radio(key="cmp_sort").set_value("most disagreement").run()
    assert not at.exception
    cache = Cache(cache_dir)
    ar = cache.ar()
    pair = ar[(ar["model_a"] == "simple_s0") & (ar["model_b"] == "resnet18_s1")]
    if pair.empty:
        pair = ar[(ar["model_a"] == "resnet18_s1") & (ar["model_b"] == "simple_s0")]
    top = pair.sort_values("ar", ascending=False, kind="stable").iloc[0]
    row = int(cache.test_images().set_index("image_id").loc[top["image_id"], "row"])
    captions = [c.value for c in at.caption]
    assert any(c.startswith(f"test image {row} ") for c in captions)
    # The per-image AR shown is eq. 2 recomputed from the two masks, equal to the stored one.
    masks = [cache.masks(m, [row])[0] for m in ("simple_s0", "resnet18_s1")]
    live = float(stats.average_residual(*masks))
    assert live == pytest.approx(top["ar"], abs=1e-6)
    assert any(f"AR = {live:.4f}" in c for c in captions)
    assert len(at.get("image")) == 4
    # Moving to the next image shows a smaller (or equal) AR.
    at.number_input(key="cmp_pos").set_value(2).run()
    second = pair.sort_values("ar", ascending=False, kind="stable").iloc[1]
    assert any(f"AR = {second['ar']:.4f}" in c.value for c in at.caption)


def test_single_model_cache_says_there_is_nothing_to_compare(tmp_path):
    root = make_fake_cache(tmp_path / "one", n_images=20, archs=("simple",), image_size=32,
                           pool_size=4, with_models=False, with_thumbs=False)  # fmt: skip
    at = run_page(root)
    assert any("fewer than two models" in i.value for i in at.info)
