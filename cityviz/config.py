"""Run configuration and the named profiles (demo, paper, cpu, smoke).

A run's config is stored in its cache manifest; a cache is only reused for the same config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

STAGES = ("data", "train", "cams", "segment", "stats", "trust", "embed", "thumbs")


@dataclass
class RunConfig:
    # data
    data: str = "synthetic"  # "synthetic", or a folder / CSV / manifest directory of photos
    synth_cities: tuple[str, ...] = ("tokyo-like", "pittsburgh-like")
    synth_spots_per_city: int = 100
    synth_views_per_spot: int = 4
    synth_seed: int = 0
    split_seed: int = 0
    spot_radius_m: float = 25.0  # VPR photos closer than this share a spot (place recognition)
    # train/val/test shares of each city's spots. The paper's 6:2:2 for photos; a synthetic demo
    # may give the test split more (CAMs and maps are cheap per image, training is not)
    split_ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)
    max_images_per_city: int | None = None
    # models. ``image_size`` is the cache's resolution (masks, label maps, thumbnails) and every
    # model's input size unless ``input_sizes`` names its architecture: a larger input gives a
    # finer Grad-CAM map (ResNet18's last block is 1/32 of its input).
    image_size: int = 224
    input_sizes: dict[str, int] = field(default_factory=dict)
    archs: tuple[str, ...] = ("simple", "simpler", "vgg11", "resnet18")
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-4
    lr_step: int = 10
    lr_gamma: float = 0.1
    pretrained: bool = False
    # autocast policy of training, predictions, Grad-CAM and (on CUDA) the segmenter
    # (cityviz.models.train.amp_dtype): "auto" (bf16 on a CUDA GPU that supports it, else fp16;
    # fp32 on a CPU, where bf16 is slower here), "fp32", "bf16" or "fp16". The CLI stores the
    # resolved name, so a cache's identity says what ran
    precision: str = "auto"
    # DataLoader worker processes that decode and read image batches (cityviz.data.images.
    # image_batches); 0 reads in the main process, the default for a 2-core machine. Results do
    # not depend on it, so it is no part of any stage's identity
    num_workers: int = 0
    # explanations
    cam_method: str = "gradcam"
    cam_target: str = "pred"  # "pred" (the paper) or "true"
    threshold: float = 0.5
    n_bins: int = 20
    min_pixels: float = 100.0
    segmenter: str = "auto"  # auto | annotations | hf | hf:<id-or-dir> | none
    reduce_labels: bool = False  # label maps are 1-based with 0 = "other" (ADE20K's release)
    embed_methods: tuple[str, ...] = ("tsne", "umap")
    embed_res: int = 32
    n_pca: int = 50
    n_clusters: int = 8
    thumb_size: int = 96
    shard_size: int = 256
    bootstrap: int = 200
    # trust checks of R_p^c (cityviz.trust.nulls): permutations of the permutation null and of
    # the city contrast (999: p-values down to 0.001), and the images per city the null tests
    # (its cost grows with their square; a city with more is tested on a random sample)
    n_permutations: int = 999
    null_images: int = 200
    # model-side trust checks (precompute/trust.py): test images for the randomisation,
    # other-city and deletion/insertion tests (a per-city balanced sample), steps of the
    # deletion/insertion curves, and test images per city × object for object removal
    trust_sample: int = 32
    trust_steps: int = 10
    trust_removal_max: int = 32

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

    def input_size(self, arch: str) -> int:
        """The side of the square images ``arch`` is trained and explained on."""
        return int(self.input_sizes.get(arch, self.image_size))

    @property
    def decode_sizes(self) -> list[int]:
        """Every size images are decoded at: the cache's own, then the models' other sizes."""
        return list(dict.fromkeys([self.image_size, *(self.input_size(a) for a in self.archs)]))

    @property
    def render_size(self) -> int:
        """The largest size any stage decodes: synthetic images are rendered at it."""
        return max(self.decode_sizes)

    @property
    def model_ids(self) -> list[str]:
        return [model_id(a, s) for a in self.archs for s in self.seeds]


def model_id(arch: str, seed: int) -> str:
    return f"{arch}_s{seed}"


# Profiles. The demo is sized for a few minutes of precompute on a 2-core CPU while every model
# still learns the task and explains it (see the README for measured stage times).
PROFILES: dict[str, RunConfig] = {
    "paper": RunConfig(),
    "demo": RunConfig(
        # 174 spots per city, most of them in the test split: ≥ 1 000 test points per model on the
        # map, while training sees the 36 spots per city (288 images) it needs. CAMs and maps are
        # cheap per image, training is not (README, "The synthetic cities").
        synth_spots_per_city=174,
        split_ratios=(36, 12, 126),  # spots per city (shares are normalised)
        image_size=96,
        # labels, masks and thumbnails stay at 96 px; ResNet18 sees 160 px so that its Grad-CAM
        # map is 5×5 instead of 3×3 (README, Limits)
        input_sizes={"resnet18": 160},
        # two architectures × two seeds: the fewest that give both seed pairs and architecture
        # pairs for AR (eq. 2, Table 2). VGG11 (half of the four-architecture demo's training) and
        # Simpler are one flag away: --archs simple,simpler,vgg11,resnet18
        archs=("simple", "resnet18"),
        # the paper's Grad-CAM: it passes the randomisation test on the demo's models, where
        # Grad-CAM++ does not (README, "Can I trust this?")
        cam_method="gradcam",
        synth_views_per_spot=4,
        epochs=3,
        batch_size=16,
        lr=2e-4,
        # the trust checks' costly parts on fewer images, to keep the demo within its minutes
        trust_sample=16,
        trust_removal_max=16,
    ),
    # real photos on a CPU: two fast architectures, one seed, a smaller input; minutes for a few
    # thousand photos on 2 cores instead of hours
    "cpu": RunConfig(
        image_size=112,
        archs=("simple", "resnet18"),
        seeds=(0,),
        epochs=5,
        batch_size=32,
        lr_step=4,
    ),
    "smoke": RunConfig(
        image_size=64,
        input_sizes={"resnet18": 96},  # exercises a model input size unlike the cache's
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
        trust_sample=4,
        trust_steps=4,
        trust_removal_max=2,
    ),
}

PROFILE_HELP = {
    "demo": "synthetic cities at 96 px (ResNet18 sees 160 px), Simple + ResNet18 × 2 seeds, "
    "3 epochs, Grad-CAM, 1 008 test images per model",
    "paper": "the paper's setting: 224 px, 30 epochs, lr 1e-4 ×0.1 every 10 epochs (needs a GPU)",
    "cpu": "real photos on a CPU: 112 px, Simple + ResNet18, 1 seed, 5 epochs (the default for "
    "--data when no GPU is seen)",
    "smoke": "a tiny run for tests (2 architectures, 1 seed, 64 px; ResNet18 input 96 px)",
}


def default_profile(data: str | None, cuda: bool) -> str:
    """The profile used when none is named: the demo for the synthetic set, and for a user's
    photos the paper's setting on a GPU or ``cpu`` without one."""
    if data in (None, "synthetic"):
        return "demo"
    return "paper" if cuda else "cpu"
