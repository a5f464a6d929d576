"""The closing summary of a precompute run, and the synthetic set's known-answer check."""

from __future__ import annotations

import math

import pandas as pd

from cityviz.cam import METHOD_NAMES
from cityviz.store import Cache
from cityviz.ui.overview import evidence_table, headline_findings


def known_answer(rpc: pd.DataFrame, discriminative: dict[str, list[str]]) -> dict[str, dict]:
    """Per city: do all planted objects rank above every shared object by R_p^c?

    ``rpc`` is one model's R_p^c table (rows kept by the min-pixel filter are compared; planted
    objects are compared whether kept or not, since a planted object must never be filtered out).
    Cities without planted objects (a control city) have nothing to check and are left out.
    """
    out = {}
    for city, planted in discriminative.items():
        if not planted:
            continue
        t = rpc[rpc["city"] == city]
        p = t[t["object"].isin(planted)]
        all_planted = [o for objs in discriminative.values() for o in objs]
        shared = t[~t["object"].isin(all_planted) & t["kept"]]
        min_planted = float(p["rpc"].min()) if len(p) == len(planted) else float("nan")
        max_shared = float(shared["rpc"].max()) if len(shared) else 0.0
        out[city] = {
            "ok": bool(not math.isnan(min_planted) and min_planted > max_shared),
            "min_planted": min_planted,
            "max_shared": max_shared,
            "max_shared_object": str(shared.loc[shared["rpc"].idxmax(), "object"])
            if len(shared)
            else None,
        }
    return out


def evidence_lines(
    null: pd.DataFrame,
    contrast: pd.DataFrame,
    threshold: float,
    model_ids: list[str],
    cities: list[str],
    top: int = 4,
) -> list[str]:
    """Per model and city, the objects whose R_p^c is evidence that they distinguish the city
    (above its permutation null and above the other cities', BH 5 %; issue 11), then every
    object the models disagree on. From ``stats/rpc_null.parquet`` and
    ``stats/rpc_contrast.parquet`` at ``threshold``."""
    ev = evidence_table(null, contrast, threshold)
    n_perm = int(null["n_permutations"].max()) if len(null) else 0
    lines = [
        "",
        f"Objects that distinguish each city (threshold {threshold}: R_p^c above its permutation "
        f"null and above the other cities', BH 5 %, {n_perm} permutations)",
    ]
    for mid in model_ids:
        for city in cities:
            t = ev[(ev["model_id"] == mid) & (ev["city"] == city) & ev["evidence"]].head(top)
            objs = ", ".join(
                f"{r.object} {r.difference:+.2f} [{r.diff_lo:+.2f}, {r.diff_hi:+.2f}]"
                for r in t.itertuples()
            )
            lines.append(f"  {mid:<14}{city:<18}{objs or 'none'}")
    head = headline_findings(null, contrast, threshold, n=len(ev) or 1)
    split = head[head["models_disagree"]]
    if len(split):
        lines.append("  models disagree:")
        for r in split.itertuples():
            lines.append(
                f"    {r.city}: {r.object} for {', '.join(r.models_with)};"
                f" not for {', '.join(r.models_without)}"
            )
    return lines


def trust_lines(verdicts: dict, removal: pd.DataFrame, model_ids: list[str]) -> list[str]:
    """Per model: the trust verdict with each check's figure against its rule, and per city the
    object whose removal drops the accuracy most (causal ones only), from ``trust/verdict.json``
    and ``trust/removal.parquet`` (precompute/trust.py)."""
    lines = ["", "Trust checks (randomisation Spearman < 0.5; other-city Spearman < 0.9; deletion "
             "AUC random − mask > 0, CI above 0)"]  # fmt: skip
    for mid in model_ids:
        v = verdicts.get(mid)
        if not isinstance(v, dict):
            continue
        checks = v.get("checks", {})
        fig = {name: _check_figure(checks.get(name)) for name in ("mprt", "other_city", "deletion")}
        lines.append(
            f"  {mid:<14}{str(v.get('verdict', '?')).upper():<5} randomisation {fig['mprt']}, "
            f"other city {fig['other_city']}, deletion {fig['deletion']}"
        )
        t = removal[(removal["model_id"] == mid) & removal["causal"].astype(bool)]
        for city, g in t.groupby("city", sort=True):
            r = g.sort_values("drop", ascending=False).iloc[0]
            lines.append(
                f"  {'':<14}without {r['object']}, {city} accuracy {100 * r['acc_before']:.0f}% → "
                f"{100 * r['acc_after']:.0f}% (random region: {100 * r['acc_random']:.0f}%, "
                f"{int(r['n_images'])} images)"
            )
    return lines


def _check_figure(check: dict | None) -> str:
    """A check of ``trust/verdict.json`` as ``"+0.12 ok"`` or ``"+0.93 FAIL"``."""
    check = check if isinstance(check, dict) else {}
    value = check.get("value")
    value = float(value) if isinstance(value, int | float) else float("nan")
    return f"{value:+.2f} {'ok' if check.get('passed') else 'FAIL'}"


def arch_vs_seed_line(d: dict) -> str:
    """The paper's claim (architecture pairs disagree more than seed pairs), in one line; says
    why it cannot be tested instead of printing NaNs (one seed, or one architecture)."""
    values = [d.get(k) for k in ("mean_arch", "mean_seed", "diff", "ci_lo", "ci_hi")]
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        missing = (
            "seed pairs (train 2 or more --seeds)"
            if not _finite(d.get("mean_seed"))
            else ("architecture pairs (train 2 or more --archs)")
        )
        return f"  architecture vs seed: untestable here, there are no {missing}"
    verdict = {True: "holds", False: "does not hold", None: "untestable"}[d.get("claim_holds")]
    return (
        "  architecture pairs {:.4f} vs seed pairs {:.4f}: difference {:.4f} [{:.4f}, {:.4f}]"
        " → paper's claim {}".format(*values, verdict)
    )


def _finite(v) -> bool:
    return isinstance(v, int | float) and not math.isnan(v)


def settings_lines(m: dict) -> list[str]:
    """Where the run's settings came from: the profile and the flags given (issue 10 goal 3)."""
    sources = m.get("config_sources") or {}
    if not sources:
        return []
    profiles = sorted({v for v in sources.values() if v.startswith("profile ")})
    flags = {k: v for k, v in sources.items() if not v.startswith("profile ")}
    cfg = m["config"]
    lines = ["Settings: " + (", ".join(profiles) or "defaults")]
    if flags:
        lines.append(
            "  from flags: " + ", ".join(f"{k}={cfg.get(k)!s} ({v})" for k, v in flags.items())
        )
    return [*lines, ""]


def format_summary(cache: Cache, timings: dict[str, float], top: int = 4) -> str:
    m = cache.manifest
    lines = [f"cityviz cache: {cache.root}", "", *settings_lines(m)]
    spots = (m["dataset"].get("spot_sources") or {}).get("file", 0)
    if spots:
        lines += [
            f"Warning: {spots} of {m['dataset'].get('n_images')} photos have no spot information: "
            "each is its own spot, so nearby photos may sit in train and test.",
            "",
        ]
    lines.append("Models (accuracy on the spot-grouped splits)")
    lines.append(f"  {'model':<14}{'input':>7}{'train':>8}{'val':>8}{'test':>8}{'train s':>9}")
    for mod in cache.models:
        size = mod.get("input_size") or cache.image_size
        lines.append(
            f"  {mod['model_id']:<14}{f'{size} px':>7}{100 * mod['train_accuracy']:>7.1f}%"
            f"{100 * mod['val_accuracy']:>7.1f}%{100 * mod['test_accuracy']:>7.1f}%"
            f"{mod.get('train_seconds', 0):>9.0f}"
        )
    if (cache.root / "stats/ar_summary.parquet").exists():
        ar = cache.ar_summary()
        lines += ["", "Average residual AR between models (paper Table 2)"]
        for r in ar.sort_values(["kind", "mean_ar"], ascending=[True, False]).itertuples():
            lines.append(
                f"  {r.model_a + ' – ' + r.model_b:<30}{r.mean_ar:.4f}  "
                f"[{r.ci_lo:.4f}, {r.ci_hi:.4f}]  ({r.kind})"
            )
        avs = cache.root / "stats/arch_vs_seed.json"
        if avs.exists():
            import json

            d = json.loads(avs.read_text())
            lines.append(arch_vs_seed_line(d))
    if (cache.root / "stats/rpc.parquet").exists():
        rpc = cache.rpc()
        thr = m["config"]["threshold"]
        lines += [
            "",
            f"Top objects per city by R_p^c (threshold {thr}, mean pixels > "
            f"{m['config']['min_pixels']:g})",
        ]
        for mid in cache.model_ids:
            t = rpc[(rpc["model_id"] == mid) & rpc["kept"]]
            for city in cache.cities:
                tc = t[t["city"] == city].sort_values("rpc", ascending=False).head(top)
                objs = ", ".join(
                    f"{o} {v:.2f}" for o, v in zip(tc["object"], tc["rpc"], strict=False)
                )
                lines.append(f"  {mid:<14}{city:<18}{objs}")
        disc = m["dataset"].get("discriminative")
        if disc:
            method = m["config"].get("cam_method", "gradcam")
            lines += [
                "",
                f"Known answer (synthetic set, {METHOD_NAMES.get(method, method)}): "
                "planted objects above every shared one?",
                "  (a coarse Grad-CAM map blurs objects into their neighbours: see README, Limits)",
            ]
            for mid in cache.model_ids:
                ka = known_answer(rpc[rpc["model_id"] == mid], disc)
                verdict = "PASS" if all(v["ok"] for v in ka.values()) else "FAIL"
                h, w = cache.cams(mid).shape[1:]
                detail = "; ".join(
                    f"{c}: planted ≥ {v['min_planted']:.2f} vs shared ≤ {v['max_shared']:.2f}"
                    f" ({v['max_shared_object']})"
                    for c, v in ka.items()
                )
                lines.append(f"  {mid:<14}{verdict}  {f'{h}×{w} map':<9}  {detail}")
        trust = ("stats/rpc_null.parquet", "stats/rpc_contrast.parquet")
        if all((cache.root / rel).exists() for rel in trust):
            lines += evidence_lines(
                cache.rpc_null(), cache.rpc_contrast(), thr, cache.model_ids, cache.cities
            )
    elif not m.get("segmenter"):
        lines += ["", "No segmenter configured: object statistics were skipped."]
    if all((cache.root / f"trust/{n}").exists() for n in ("verdict.json", "removal.parquet")):
        lines += trust_lines(cache.trust_verdict(), cache.trust_table("removal"), cache.model_ids)
    lines += [
        "",
        "Stage times (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
        + f"  (total {sum(timings.values()):.1f})",
    ]
    return "\n".join(lines)
