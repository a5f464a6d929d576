"""Known answer: on synthetic cities, the demo's models' explanations land on the planted objects.

A small synthetic set with the demo's settings (96 px cache, ResNet18 fed 160 px, 3 epochs, batch
16, Grad-CAM) goes through the real pipeline (train, CAMs, segmentation
from the set's own labels, statistics, trust checks), and every city's planted objects must rank
above every shared object by R_p^c at the default threshold: the end-to-end check that masks,
labels and eq. 1 line up.

The set adds a ``control`` city without planted objects to tokyo-like and pittsburgh-like (40
spots each, split 6:2:2: 96 training images per city). With two cities a network may learn one
city's cues and call the rest the other city, and then nothing can show that other city's cues
(README, Limits); with the control city both must be learnt.
``make demo`` prints the same check for all its models on its two-city set.
"""

from __future__ import annotations

import numpy as np
import pytest

from cityviz.store import Cache
from precompute.__main__ import main
from precompute.summary import known_answer

# ResNet18 only: on this three-city set, Simple at the demo's 3 epochs of batch 16 (54 steps)
# reached 62 % test accuracy, too little to explain anything; on the demo's two cities it reaches
# 97-100 % and the demo's own summary checks its known answer (README, Benchmarks)
MODELS = ["resnet18_s0"]

# the module fixture trains and runs every stage: on a loaded 2-core machine it can pass 600 s
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("known")
    args = [
        "--profile", "demo", "--cities", "tokyo-like,pittsburgh-like,control",
        "--spots-per-city", "40", "--split", "6:2:2",
        "--archs", "resnet18", "--seeds", "0",
        "--stages", "data,train,cams,segment,stats,trust",
        "--trust-sample", "12", "--trust-removal-max", "8",
        "--cache", str(base / "cache"), "--data-dir", str(base / "data"), "--no-progress", "-q",
    ]  # fmt: skip
    assert main(args) == 0
    return Cache(base / "cache")


def test_models_learn_the_synthetic_cities(trained):
    # 96 test images of 3 cities (chance: 33 %); the demo's 90 % goal is measured on its 1 008
    for m in trained.models:
        assert m["test_accuracy"] >= 0.75, m


@pytest.mark.parametrize("model_id", MODELS)
def test_planted_objects_rank_above_every_shared_object(trained, model_id):
    disc = trained.manifest["dataset"]["discriminative"]
    assert disc == {
        "tokyo-like": ["signboard", "fence"],
        "pittsburgh-like": ["skyscraper", "tree"],
        "control": [],
    }
    rpc = trained.rpc()
    result = known_answer(rpc[rpc["model_id"] == model_id], disc)
    assert set(result) == {"tokyo-like", "pittsburgh-like"}
    failures = {city: r for city, r in result.items() if not r["ok"]}
    assert not failures, failures


@pytest.mark.parametrize("model_id", MODELS)
def test_planted_objects_beat_their_null_and_distinguish_their_city(trained, model_id):
    """Issue 11's statistics-side checks on real pipeline output, at the default threshold.

    Rule: every planted object of a city has R_p^c above its permutation null (``above_null``:
    BH-adjusted p < 0.05 and R_p^c above the null's 97.5 % quantile) and distinguishes its city
    from the others (``distinguishes``: BH-adjusted p < 0.05, bootstrap CI of the difference
    above 0); shared objects are mostly within their null: at most a third of the kept shared
    objects of the planted cities, pooled, are above it.
    """
    disc = trained.manifest["dataset"]["discriminative"]
    threshold = trained.manifest["config"]["threshold"]
    null, contrast = trained.rpc_null(), trained.rpc_contrast()
    at_t = {
        name: t[(t["model_id"] == model_id) & np.isclose(t["threshold"], threshold)]
        for name, t in (("null", null), ("contrast", contrast))
    }
    planted_all = {o for objs in disc.values() for o in objs}
    shared_above = []
    for city, planted in disc.items():
        if not planted:
            continue
        n = at_t["null"][at_t["null"]["city"] == city].set_index("object")
        c = at_t["contrast"][at_t["contrast"]["city"] == city].set_index("object")
        for obj in planted:
            assert n.loc[obj, "above_null"], (city, obj, n.loc[obj].to_dict())
            assert c.loc[obj, "distinguishes"], (city, obj, c.loc[obj].to_dict())
        shared = n[~n.index.isin(planted_all) & n["p_adjusted"].notna()]
        assert len(shared) >= 3
        shared_above.extend(shared["above_null"])
    assert np.mean(shared_above) <= 1 / 3, shared_above


# ---- model-side trust checks (issue 11, section 2; precompute/trust.py) -----------------------

# "Far more": painting a planted object out must cost its city at least 30 points of accuracy
# more than painting out an equal-area random region, or the most costly shared object.
REMOVAL_MARGIN = 0.3


@pytest.mark.parametrize("model_id", MODELS)
def test_removing_planted_objects_drops_their_citys_accuracy(trained, model_id):
    disc = trained.manifest["dataset"]["discriminative"]
    planted_all = {o for objs in disc.values() for o in objs}
    removal = trained.trust_table("removal")
    removal = removal[removal["model_id"] == model_id]
    for city, planted in disc.items():
        if not planted:
            continue
        t = removal[removal["city"] == city].set_index("object")
        shared = t[~t.index.isin(planted_all)]
        assert len(shared) >= 3
        for obj in planted:
            r = t.loc[obj]
            detail = (city, obj, r.to_dict(), shared["drop"].to_dict())
            assert r["causal"], detail
            assert r["drop"] - r["drop_random"] >= REMOVAL_MARGIN, detail
            assert r["drop"] - shared["drop"].max() >= REMOVAL_MARGIN, detail


def _model_and_sample(cache: Cache, model_id: str, n: int = 12):
    import torch

    from cityviz.models.archs import normalize
    from cityviz.models.checkpoint import load_checkpoint
    from precompute.trust import sample_rows

    model, meta = load_checkpoint(cache.root / cache.model(model_id)["checkpoint"], "cpu")
    size = int(meta["input_size"])
    rel = "inputs/test.npy" if size == cache.image_size else f"inputs/test_{size}px.npy"
    truth = cache.test_images()["city_idx"].to_numpy()
    rows = sample_rows(truth, n)
    x = torch.from_numpy(np.load(cache.root / rel)[rows]).permute(0, 3, 1, 2)
    x = normalize(x, meta["arch"])
    pred = cache.predictions(model_id).sort_values("row")["pred"].to_numpy()[rows]
    return model, meta["arch"], x, pred


@pytest.mark.parametrize("model_id", MODELS)
def test_randomisation_test_passes_on_the_trained_models(trained, model_id):
    """MPRT (Adebayo et al. 2018) of the cache's Grad-CAM, as the trust stage recorded it,
    passes its rule. Grad-CAM++ is judged by the same rule on 12 test images for the record (it
    failed it on VGG11 and ResNet18 in earlier runs: README, *Limits*)."""
    from cityviz.trust import sanity, verdict

    recorded = trained.trust_verdict()[model_id]
    assert recorded["method"] == "gradcam"
    check = recorded["checks"]["mprt"]
    assert check["passed"], check
    assert check["value"] < verdict.MPRT_MAX, check
    model, arch, x, pred = _model_and_sample(trained, model_id)
    res = sanity.mprt(model, arch, x, pred, method="gradcam++", size=trained.image_size,
                      max_steps=sanity.head_steps(model, arch))  # fmt: skip
    plus = verdict.mprt_check(res.spearman, res.head_steps)
    print(f"{model_id}: MPRT Grad-CAM {check['value']:.3f}, Grad-CAM++ {plus['value']:.3f}")
    assert np.isfinite(plus["value"])


@pytest.fixture(scope="module")
def shuffled(trained):
    """Adebayo et al. 2018's data-randomisation control: Simple trained on the same images with
    the training labels shuffled (the demo's 3 epochs, batch and learning rate), then every trust
    check as the stage runs them (the cache's CAM method)."""
    import torch

    from cityviz.models.train import predict, train_model
    from precompute.trust import check_model

    images = trained.images()
    labels = {s: images[images["split"] == s].sort_values("split_row")["city_idx"].to_numpy()
              for s in ("train", "val")}  # fmt: skip
    shuffled_labels = np.random.default_rng(0).permutation(labels["train"])
    root, cfg = trained.root, trained.manifest["config"]
    result = train_model(
        "simple", 0, np.load(root / "inputs/train.npy"), shuffled_labels,
        np.load(root / "inputs/val.npy"), labels["val"], len(trained.cities),
        epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], progress=False,
    )  # fmt: skip
    model = result.model.eval()
    test = np.load(root / "inputs/test.npy")
    truth = trained.test_images()["city_idx"].to_numpy()
    probs = predict(model, "simple", test, torch.device("cpu"))
    tables, verdict = check_model(
        model, "simple", test, probs.argmax(1), truth, trained.cities,
        labels=np.asarray(trained.labels()), class_names=trained.class_names(),
        method=cfg["cam_method"], size=trained.image_size, sample=12, steps=10, removal_max=8,
        min_pixels=100.0, n_boot=200, device=torch.device("cpu"), model_id="shuffled",
        probs_before=probs,
    )  # fmt: skip
    return tables, verdict, float((probs.argmax(1) == truth).mean())


def test_label_shuffled_model_is_flagged(shuffled, trained):
    tables, verdict, accuracy = shuffled
    removal = tables["removal"]
    disc = trained.manifest["dataset"]["discriminative"]
    planted = removal[removal["object"].isin({o for objs in disc.values() for o in objs})]
    cols = ["city", "object", "acc_before", "acc_after", "acc_random", "causal"]
    print(f"shuffled-label control: test accuracy {accuracy:.3f}", verdict, removal[cols])
    assert accuracy < 0.6
    assert not planted["causal"].any(), planted
