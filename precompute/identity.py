"""What each stage's output depends on: per-stage and per-unit identities.

A cache records, for every finished unit of work, the identity of the settings and upstream
results it was made from. When a setting changes, only the units whose identity changed are redone:
a new segmenter or threshold redoes ``segment``/``stats`` and what follows, never training; a new
CAM method redoes ``cams`` onward; adding a model to ``--archs`` trains only that model.

Identities are short SHA-256 digests of canonical JSON, so they are stable across processes,
machines and Python versions.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cityviz.config import RunConfig, model_id

# The RunConfig fields each stage reads (besides what its upstream stages made).
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "data": (
        "data",
        "synth_cities",
        "synth_spots_per_city",
        "synth_views_per_spot",
        "synth_seed",
        "split_seed",
        "split_ratios",
        "spot_radius_m",
        "max_images_per_city",
        "image_size",
    ),
    "train": ("epochs", "batch_size", "lr", "lr_step", "lr_gamma", "pretrained", "precision"),
    "cams": ("cam_method", "cam_target", "shard_size"),
    "segment": ("segmenter", "reduce_labels", "shard_size", "precision"),
    "stats": (
        "threshold",
        "n_bins",
        "min_pixels",
        "bootstrap",
        "n_permutations",
        "null_images",
    ),
    "trust": ("trust_sample", "trust_steps", "trust_removal_max", "min_pixels", "bootstrap"),
    "embed": ("embed_methods", "embed_res", "n_pca", "n_clusters", "threshold", "n_bins"),
    "thumbs": ("threshold", "thumb_size"),
}


def digest(obj: Any) -> str:
    """16 hex digits of SHA-256 over ``obj`` as canonical JSON."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Identities:
    """The identity of every stage and unit of work for one config and data set.

    ``fingerprint`` is the data set's (:meth:`CityDataset.fingerprint`).
    """

    def __init__(self, cfg: RunConfig, fingerprint: str) -> None:
        self.cfg = cfg
        self.fingerprint = fingerprint
        self._memo: dict[tuple[str, str], str] = {}

    def _keys(self, stage: str) -> dict[str, Any]:
        d = self.cfg.to_dict()
        return {k: d.get(k) for k in STAGE_KEYS[stage]}

    def _cached(self, key: tuple[str, str], make) -> str:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    # ---- per stage -------------------------------------------------------------------------
    def data(self) -> str:
        return self._cached(("data", ""), lambda: digest([self.fingerprint, self._keys("data")]))

    def model(self, mid: str) -> str:
        """A trained model: its architecture, seed, input size and the training settings."""

        def make() -> str:
            arch, _, seed = mid.rpartition("_s")
            return digest(
                [self.data(), arch, int(seed), self.cfg.input_size(arch), self._keys("train")]
            )

        return self._cached(("model", mid), make)

    def cams_of(self, mid: str) -> str:
        """One model's CAMs and predictions."""
        from cityviz.cam import CAM_VERSION

        return self._cached(
            ("cams_of", mid), lambda: digest([self.model(mid), self._keys("cams"), CAM_VERSION])
        )

    def segment(self) -> str:
        return self._cached(("segment", ""), lambda: digest([self.data(), self._keys("segment")]))

    def trust_of(self, mid: str) -> str:
        """One model's trust checks: its CAMs (and so its weights), the label maps (object
        removal), the trust settings and the checks' code version."""
        from cityviz.trust import TRUST_VERSION

        return self._cached(
            ("trust_of", mid),
            lambda: digest([self.cams_of(mid), self.segment(), self._keys("trust"), TRUST_VERSION]),
        )

    def embed_of(self, mid: str) -> str:
        """One model's maps: its CAMs, the label maps (cluster names) and the embedding settings."""
        return self._cached(
            ("embed_of", mid),
            lambda: digest(
                [self.cams_of(mid), self.segment(), self._keys("embed"), _embed_library()]
            ),
        )

    def stage(self, name: str) -> str:
        """The identity of a whole stage (what a ``done`` stage is compared against)."""
        mids = self.model_ids
        match name:
            case "data":
                return self.data()
            case "train":
                return digest([self.model(m) for m in mids])
            case "cams":
                return digest([self.cams_of(m) for m in mids])
            case "segment":
                return self.segment()
            case "stats":
                return digest([self.stage("cams"), self.segment(), self._keys("stats")])
            case "trust":
                return digest([self.trust_of(m) for m in mids])
            case "embed":
                return digest([self.embed_of(m) for m in mids])
            case "thumbs":
                return digest([self.stage("cams"), self._keys("thumbs")])
        raise ValueError(f"unknown stage {name!r}")

    def unit(self, stage: str, unit: str) -> str:
        """The identity of one unit of work: ``train`` units are model ids, ``cams`` units
        ``<model_id>:<shard>``, ``embed`` and ``trust`` units model ids; other stages' units share
        the stage's."""
        if stage == "train":
            return self.model(unit)
        if stage == "cams":
            return self.cams_of(unit.rsplit(":", 1)[0])
        if stage == "embed":
            return self.embed_of(unit)
        if stage == "trust":
            return self.trust_of(unit)
        return self.stage(stage)

    @property
    def model_ids(self) -> list[str]:
        return [model_id(a, s) for a in self.cfg.archs for s in self.cfg.seeds]


def _embed_library() -> dict[str, Any]:
    """The embedding settings cityviz fixes in code (a change re-embeds every map)."""
    from cityviz.embed import EXACT_KNN_MAX, TSNE_DEFAULTS

    return {"tsne": TSNE_DEFAULTS, "exact_knn_max": EXACT_KNN_MAX}
