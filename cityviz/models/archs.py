"""The architecture registry: the one place that knows each network.

Every architecture is registered with its builder, normalisation, default input size, Grad-CAM
target layer and a ``split`` that cuts a model at that layer into ``trunk`` (image → target
activations) and ``head`` (activations → logits). ``head(trunk(x)) == model(x)`` exactly, and both
halves share the model's parameters. CAM code calls the halves instead of hooking the model, which
keeps a model that many dashboard sessions share free of global state, and lets the trunk run
without an autograd graph.

Our reading of the paper's Table 1 (Simple / Simpler), which gives kernel sizes, channels and pools
but not padding:

* every convolution is padded by ``k // 2`` ("same"), so each 2×2 max pool exactly halves the map;
* each convolution is followed by a ReLU; Simple has four conv+pool blocks, Simpler three (the
  table's fourth pool row belongs to Simple's fourth convolution);
* as in torchvision's VGG, an adaptive average pool to 7×7 sits before the first fully connected
  layer, so the classifier (4096 → 100 → classes, ReLU between) has the same size for any input;
  at 224 px it only averages Simple's 14×14 and Simpler's 28×28 maps;
* the Grad-CAM target is the last convolution's ReLU output, before its pool (the paper's
  "last convolutional layer"), as for VGG11; for ResNet18 it is ``layer4``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but cannot be loaded (e.g. no internet)."""


@dataclass(frozen=True)
class ArchSpec:
    """What the rest of cityviz needs to know about one architecture."""

    name: str
    display: str
    builder: Callable[[int], nn.Module]
    split: Callable[[nn.Module], tuple[nn.Module, nn.Module]]
    target_layer: str
    default_size: int = 224
    min_size: int = 32
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    imagenet_weights: str | None = None
    description: str = ""


_REGISTRY: dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec) -> ArchSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_arch(name: str) -> ArchSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; known: {', '.join(list_archs())}"
        ) from None


def list_archs() -> list[str]:
    return list(_REGISTRY)


# --------------------------------------------------------------------------------------------
# Simple and Simpler (paper, Table 1)


class ShallowNet(nn.Module):
    """Conv(k, c)+ReLU(+2×2 max pool) blocks, then a 7×7 adaptive pool and a 3-layer classifier.

    ``features`` ends at the last convolution's ReLU (the Grad-CAM target); ``pool`` is that
    block's max pool, so ``features → pool → avgpool → classifier`` is the whole network.
    """

    def __init__(self, blocks: list[tuple[int, int]], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for i, (k, out_ch) in enumerate(blocks):
            layers += [nn.Conv2d(in_ch, out_ch, k, padding=k // 2), nn.ReLU(inplace=True)]
            if i < len(blocks) - 1:
                layers.append(nn.MaxPool2d(2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.MaxPool2d(2)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(in_ch * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 100),
            nn.ReLU(inplace=True),
            nn.Linear(100, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.pool(self.features(x)))
        return self.classifier(torch.flatten(x, 1))


def _split_shallow(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    head = nn.Sequential(model.pool, model.avgpool, nn.Flatten(1), model.classifier)
    return model.features, head


register_arch(
    ArchSpec(
        name="simple",
        display="Simple",
        builder=lambda n: ShallowNet([(5, 20), (7, 64), (5, 96), (7, 128)], n),
        split=_split_shallow,
        target_layer="features.10",
        min_size=16,
        description="Paper Table 1: conv5-20, conv7-64, conv5-96, conv7-128, each + 2×2 pool; "
        "FC 4096-100-classes.",
    )
)
register_arch(
    ArchSpec(
        name="simpler",
        display="Simpler",
        builder=lambda n: ShallowNet([(9, 20), (9, 64), (9, 96)], n),
        split=_split_shallow,
        target_layer="features.7",
        min_size=8,
        description="Paper Table 1: conv9-20, conv9-64, conv9-96, each + 2×2 pool; "
        "FC 4096-100-classes.",
    )
)


# --------------------------------------------------------------------------------------------
# torchvision architectures


def _vgg11(num_classes: int) -> nn.Module:
    from torchvision.models import vgg11

    return vgg11(num_classes=num_classes)


def _split_vgg(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    # features[-1] is the last max pool; the ReLU before it ends the last conv block.
    trunk = model.features[:-1]
    head = nn.Sequential(model.features[-1], model.avgpool, nn.Flatten(1), model.classifier)
    return trunk, head


def _resnet18(num_classes: int) -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(num_classes=num_classes)


def _split_resnet(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    trunk = nn.Sequential(
        model.conv1,
        model.bn1,
        model.relu,
        model.maxpool,
        model.layer1,
        model.layer2,
        model.layer3,
        model.layer4,
    )
    head = nn.Sequential(model.avgpool, nn.Flatten(1), model.fc)
    return trunk, head


register_arch(
    ArchSpec(
        name="vgg11",
        display="VGG11",
        builder=_vgg11,
        split=_split_vgg,
        target_layer="features.19",
        imagenet_weights="VGG11_Weights.IMAGENET1K_V1",
        description="torchvision VGG11 (no batch norm); Grad-CAM on the last conv block.",
    )
)
register_arch(
    ArchSpec(
        name="resnet18",
        display="ResNet18",
        builder=_resnet18,
        split=_split_resnet,
        target_layer="layer4",
        imagenet_weights="ResNet18_Weights.IMAGENET1K_V1",
        description="torchvision ResNet18; Grad-CAM on layer4.",
    )
)


# --------------------------------------------------------------------------------------------


def _classifier_layer(model: nn.Module) -> tuple[nn.Module, str]:
    """The final linear layer and its attribute path (replaced when loading ImageNet weights)."""
    if hasattr(model, "fc"):
        return model.fc, "fc"
    return model.classifier[-1], f"classifier.{len(model.classifier) - 1}"


def load_imagenet_weights(model: nn.Module, spec: ArchSpec) -> None:
    """Initialise ``model`` (any class count) from torchvision's ImageNet weights, in place.

    The classifier's last layer keeps its fresh initialisation, since its class count differs.
    Weights come from torchvision's cache (``$TORCH_HOME/hub/checkpoints``) or are downloaded.
    """
    if spec.imagenet_weights is None:
        raise WeightsUnavailable(f"{spec.display} has no ImageNet weights; train it from scratch.")
    from torchvision.models import get_weight

    weights = get_weight(spec.imagenet_weights)
    try:
        state = weights.get_state_dict(progress=False)
    except Exception as exc:  # network errors come in many types
        url = weights.url
        raise WeightsUnavailable(
            f"Could not load the ImageNet weights for {spec.display} ({exc.__class__.__name__}: "
            f"{exc}). They are downloaded from {url} on first use and cached under "
            f"$TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints). On a machine "
            f"without internet, copy that file there by hand, or train from scratch (the default; "
            f"drop --pretrained)."
        ) from exc
    _, last = _classifier_layer(model)
    state = {k: v for k, v in state.items() if not k.startswith(last + ".")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {last + ".weight", last + ".bias"}:
        raise WeightsUnavailable(
            f"ImageNet weights for {spec.display} do not fit the model "
            f"(missing {missing}, unexpected {unexpected})."
        )


def build_model(name: str, num_classes: int, *, pretrained: bool = False) -> nn.Module:
    """A fresh model of architecture ``name`` with ``num_classes`` outputs, in eval mode."""
    if num_classes < 2:
        raise ValueError("a city classifier needs at least 2 classes")
    spec = get_arch(name)
    model = spec.builder(num_classes)
    if pretrained:
        load_imagenet_weights(model, spec)
    return model.eval()


def split_model(model: nn.Module, arch: str) -> tuple[nn.Module, nn.Module]:
    """``(trunk, head)`` of ``model`` at its Grad-CAM target layer (see module docstring).

    Nothing is copied and ``model`` is not changed: the halves are new containers around
    ``model``'s own submodules, so they share its parameters, buffers and mode flags. The glue
    modules the split creates (``Sequential``, ``Flatten``; nothing that behaves differently in
    training) are set to eval mode, so that :func:`require_eval` on the halves sees exactly the
    mode of ``model``'s own submodules, whenever it is called.
    """
    trunk, head = get_arch(arch).split(model)
    own = {id(m) for m in model.modules()}
    for half in (trunk, head):
        for m in half.modules():
            if id(m) not in own:
                m.training = False
    return trunk, head


def require_eval(*modules: nn.Module, what: str = "this function") -> None:
    """Raise ``ValueError`` unless every submodule of ``modules`` is in eval mode.

    The contract of every cityviz function that runs a model for inference (CAMs, predictions):
    the caller's model is never modified, so a model in training mode is refused rather than
    switched. In training mode batch norm normalises with the batch's statistics (outputs depend
    on the other images of the batch) and overwrites its running statistics, and dropout makes
    two identical calls disagree. Switching to eval mode and back would itself mutate a model
    that other threads (dashboard sessions) may be running at that moment, and a private copy
    per call would cost a model's memory (VGG11: 0.5 GB) each time, so the caller, who owns the
    model, is asked to call ``model.eval()`` once.
    """
    for module in modules:
        for name, sub in module.named_modules():
            if sub.training:
                where = f" (e.g. submodule {name!r})" if name else ""
                raise ValueError(
                    f"{what} needs a model in eval mode, but it is in training mode{where}: "
                    f"call model.eval() first (cityviz never changes a model's mode itself, "
                    f"since one model may be shared by several threads)."
                )


def normalize(x: torch.Tensor, arch: str) -> torch.Tensor:
    """uint8 or [0,1] float images [B,3,H,W] → the network's normalised float input."""
    spec = get_arch(arch)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    mean = torch.tensor(spec.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
