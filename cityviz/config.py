"""Run configuration and the named profiles (demo, paper, smoke).

A run's config is stored in its cache manifest; a cache is only reused for the same config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

STAGES = ("data", "train", "cams", "segment", "stats", "embed", "thumbs")


@dataclass
class RunConfig:
    # data
    data: str = "synthetic"  # "synthetic", or a folder / CSV / manifest directory of photos
    synth_cities: tuple[str, ...] = ("tokyo-like", "pittsburgh-like")
    synth_spots_per_city: int = 100
    synth_views_per_spot: int = 4
    synth_seed: int = 0
    split_seed: int = 0
    max_images_per_city: int | None = None
    # models
    image_size: int = 224
    archs: tuple[str, ...] = ("simple", "simpler", "vgg11", "resnet18")
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-4
    lr_step: int = 10
    lr_gamma: float = 0.1
    pretrained: bool = False
    # explanations
    cam_method: str = "gradcam"
    cam_target: str = "pred"  # "pred" (the paper) or "true"
    threshold: float = 0.5
    n_bins: int = 20
    min_pixels: float = 100.0
    segmenter: str = "auto"  # auto | annotations | hf | hf:<id-or-dir> | none
    embed_methods: tuple[str, ...] = ("tsne", "umap")
    embed_res: int = 32
    n_pca: int = 50
    n_clusters: int = 8
    thumb_size: int = 96
    shard_size: int = 256
    bootstrap: int = 200

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(names)
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    @property
    def model_ids(self) -> list[str]:
        return [model_id(a, s) for a in self.archs for s in self.seeds]


def model_id(arch: str, seed: int) -> str:
    return f"{arch}_s{seed}"


# Profiles. The demo is sized so that the whole precompute fits in ~10 minutes on a 2-core CPU
# while every architecture still learns the task (see the README for measured stage times).
PROFILES: dict[str, RunConfig] = {
    "paper": RunConfig(),
    "demo": RunConfig(
        image_size=96,
        synth_spots_per_city=80,
        synth_views_per_spot=4,
        epochs=3,
        batch_size=8,
        lr=1e-4,
    ),
    "smoke": RunConfig(
        image_size=64,
        synth_spots_per_city=12,
        synth_views_per_spot=3,
        archs=("simple", "resnet18"),
        seeds=(0,),
        epochs=1,
        batch_size=16,
        embed_methods=("tsne",),
        shard_size=8,
        bootstrap=20,
        n_clusters=3,
    ),
}

PROFILE_HELP = {
    "demo": "synthetic cities, 96 px, 4 architectures × 2 seeds, 3 epochs (< 10 min, 2 CPU cores)",
    "paper": "the paper's setting: 224 px, 30 epochs, lr 1e-4 ×0.1 every 10 epochs (needs a GPU)",
    "smoke": "a tiny run for tests (2 architectures, 1 seed, 64 px)",
}
