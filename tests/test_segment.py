"""cityviz.segment: annotation labels stay aligned and exact; the Hugging Face backend loads
through the real from_pretrained path, matches the model's own argmax, and fails clearly offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityviz import segment
from cityviz.data.ade20k import ADE20K_CLASSES
from cityviz.data.images import resize_center_crop
from cityviz.segment import (
    NO_SEGMENTER_MESSAGE,
    AnnotationSegmenter,
    HFSegmenter,
    Segmenter,
    SegmenterUnavailable,
    segmenter_amp_dtype,
    segmenter_from_spec,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


# ---------------------------------------------------------------- annotations


def _block_label(height: int, width: int) -> np.ndarray:
    """Constant 2x2 blocks: block (r, c) holds c + 12 r, so a factor-2 nearest downscale of any
    flavour yields exactly ``c + 12 r`` at output pixel (r, c)."""
    rows, cols = np.mgrid[0:height, 0:width]
    return (cols // 2 + 12 * (rows // 2)).astype(np.uint8)


def _write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_annotation_labels_are_center_cropped_aligned_and_exact(tmp_path: Path) -> None:
    # 16 x 24 photo → shorter side 8 (factor 2) → 8 x 12 → center crop keeps columns 2..9.
    label = _block_label(16, 24)
    label[0:2, :] = 255  # first output row: unlabelled
    label[2:4, 4:6] = 255  # the 8-bit ignore value again, at output pixel (1, 0)
    label_path = _write_png(tmp_path / "a.png", label)
    seg = AnnotationSegmenter({"a": label_path}, ADE20K_CLASSES)

    # The matching photo encodes the block column in red and the block row in green.
    rows, cols = np.mgrid[0:16, 0:24]
    photo = np.zeros((16, 24, 3), dtype=np.uint8)
    photo[..., 0] = 20 * (cols // 2)
    photo[..., 1] = 30 * (rows // 2)
    crop = resize_center_crop(photo, 8)  # the model input, bilinear
    out = seg.segment(crop[None], ["a"])

    r, c = np.mgrid[0:8, 0:8]
    expected = (c + 2 + 12 * r).astype(np.uint8)
    expected[0, :] = 255
    expected[1, 0] = 255
    assert out.shape == (1, 8, 8)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], expected)
    # Pixel alignment: each label pixel sits on the photo pixel of the same block.
    block_col = np.rint(crop[..., 0] / 20).astype(int)
    block_row = np.rint(crop[..., 1] / 30).astype(int)
    labelled = out[0] != 255
    np.testing.assert_array_equal(out[0][labelled], (block_col + 12 * block_row)[labelled])
    assert isinstance(seg, Segmenter)


def test_annotation_own_class_list_and_uint16(tmp_path: Path) -> None:
    # CamVid-like 11 classes: 255 is unlabelled (values 11..254 are refused, see
    # test_segment_labels.py).
    small = np.array([[0, 10, 255, 255]] * 4, dtype=np.uint8)
    seg11 = AnnotationSegmenter({"x": _write_png(tmp_path / "x.png", small)}, list("abcdefghijk"))
    out = seg11.segment(np.zeros((1, 4, 4, 3), np.uint8), ["x"])
    np.testing.assert_array_equal(out[0, 0], [0, 10, 255, 255])

    # More than 255 classes: uint16 maps, 16-bit PNG values survive, 65535 stays unlabelled.
    wide = np.array([[0, 280, 299, 65535]] * 4, dtype=np.uint16)
    seg300 = AnnotationSegmenter(
        {"y": _write_png(tmp_path / "y.png", wide)}, [f"c{i}" for i in range(300)]
    )
    out16 = seg300.segment(np.zeros((1, 4, 4, 3), np.uint8), ["y"])
    assert out16.dtype == np.uint16
    np.testing.assert_array_equal(out16[0, 0], [0, 280, 299, 65535])


def test_annotation_missing_id_and_missing_ids(tmp_path: Path) -> None:
    seg = AnnotationSegmenter({"a": _write_png(tmp_path / "a.png", _block_label(8, 8))}, ["c"])
    with pytest.raises(KeyError, match="'zzz'"):
        seg.segment(np.zeros((1, 8, 8, 3), np.uint8), ["zzz"])
    with pytest.raises(ValueError, match="image_ids"):
        seg.segment(np.zeros((1, 8, 8, 3), np.uint8))


# ---------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def tiny_segformer(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random SegFormer with ADE20K's labels, saved like a downloaded checkpoint."""
    import torch
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    torch.manual_seed(0)
    id2label = dict(enumerate(ADE20K_CLASSES))
    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 1],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=len(ADE20K_CLASSES),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model = SegformerForSemanticSegmentation(config).eval()
    # Resize to 32 → logits at 8x8, so the 64x64 result needs a real upsampling.
    processor = SegformerImageProcessor(size={"height": 32, "width": 32})
    directory = tmp_path_factory.mktemp("tiny-segformer")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory, model, processor


def test_hf_segmenter_matches_model_argmax(tiny_segformer) -> None:
    import torch

    directory, model, processor = tiny_segformer
    images = np.random.default_rng(0).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    seg = HFSegmenter(directory, batch_size=1)
    out = seg.segment(images)

    assert out.shape == (2, 64, 64)
    assert out.dtype == np.uint8
    assert out.min() >= 0 and out.max() < 150
    assert tuple(seg.class_names) == ADE20K_CLASSES
    assert seg.name == directory.name
    assert isinstance(seg, Segmenter)

    expected = []
    with torch.no_grad():
        for image in images:  # one at a time, like batch_size=1
            pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
            outputs = model(pixel_values=pixels)
            (labels,) = processor.post_process_semantic_segmentation(
                outputs, target_sizes=[(64, 64)]
            )
            expected.append(labels.numpy())
    expected = np.stack(expected)
    assert len(np.unique(expected)) > 1  # a constant map would not check the wiring
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    ("device", "precision", "bf16_gpu", "want"),
    [
        ("cpu", "auto", True, None),  # float32 on a CPU, whatever the precision says
        ("cpu", "bf16", True, None),
        ("cpu", "fp16", True, None),
        ("cuda", "auto", True, "bfloat16"),
        ("cuda:0", "auto", False, "float16"),
        ("cuda", "bf16", False, "bfloat16"),
        ("cuda", "fp32", True, None),
    ],
)
def test_segmenter_autocasts_on_cuda_only(
    monkeypatch: pytest.MonkeyPatch, device: str, precision: str, bf16_gpu: bool, want
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    got = segmenter_amp_dtype(device, precision)
    assert got == (getattr(torch, want) if want else None)
    with pytest.raises(ValueError, match="precision must be one of"):
        segmenter_amp_dtype(device, "half")


def test_hf_segmenter_logits_are_float32_whatever_the_autocast_dtype(tiny_segformer) -> None:
    import torch

    directory, _, processor = tiny_segformer
    images = np.random.default_rng(1).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    seg = HFSegmenter(directory, batch_size=2, precision="auto")
    assert seg.amp_dtype is None  # a CPU: float32
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    ref = seg.logits(pixels)
    assert ref.dtype == torch.float32
    labels = seg.segment(images)
    for dtype in (torch.bfloat16, torch.float16):  # what CUDA would pick; CPU autocast has both
        seg.amp_dtype = dtype
        out = seg.logits(pixels)
        assert out.dtype == torch.float32 and out.shape == ref.shape
        assert not torch.equal(out, ref)  # autocast did run
        torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05 * float(ref.abs().max()))
        assert (seg.segment(images) == labels).mean() > 0.9
    with pytest.raises(ValueError, match="precision must be one of"):
        HFSegmenter(directory, precision="half")


def test_hf_segmenter_loads_upernet_with_a_centre_cropping_processor(tmp_path: Path) -> None:
    """A tiny UPerNet/ConvNeXt saved with a ConvNeXt processor that centre-crops (crop_pct) loads
    through from_pretrained; non-square crops are segmented whole (see test_segment_labels.py
    for the alignment), not through the processor's crop."""
    import torch
    import torch.nn.functional as F
    from transformers import (
        ConvNextConfig,
        ConvNextImageProcessor,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

    torch.manual_seed(0)
    id2label = dict(enumerate(ADE20K_CLASSES))
    backbone = ConvNextConfig(
        depths=[1, 1, 1, 1],
        hidden_sizes=[8, 16, 24, 32],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = UperNetConfig(
        backbone_config=backbone,
        hidden_size=16,
        pool_scales=[1, 2],
        use_auxiliary_head=False,
        num_labels=len(ADE20K_CLASSES),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model = UperNetForSemanticSegmentation(config).eval()
    processor = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    seg = HFSegmenter(tmp_path, batch_size=2)
    assert type(seg.processor).__name__.startswith("ConvNextImageProcessor")
    assert seg.processor.crop_pct == pytest.approx(0.875)
    assert tuple(seg.class_names) == ADE20K_CLASSES
    images = np.random.default_rng(1).integers(0, 256, size=(2, 48, 72, 3), dtype=np.uint8)
    out = seg.segment(images)
    assert out.shape == (2, 48, 72) and out.dtype == np.uint8

    # Reference: the whole crop resized to 32x48 (shortest edge 32), only normalised.
    resized = [
        np.array(Image.fromarray(im).resize((48, 32), Image.Resampling.BICUBIC)) for im in images
    ]
    pixels = processor(images=resized, return_tensors="pt", do_resize=False, do_center_crop=False)[
        "pixel_values"
    ]
    assert tuple(pixels.shape[-2:]) == (32, 48)
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    expected = F.interpolate(logits, size=(48, 72), mode="bilinear", align_corners=False)
    expected = expected.argmax(dim=1).numpy()
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("which", ["missing_dir", "empty_dir", "hub_id"])
def test_hf_segmenter_unavailable_names_the_fix(
    tmp_path: Path, which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    probed: list[str] = []  # offline mode must never try the network
    monkeypatch.setattr(segment, "_hub_reachable", lambda host: probed.append(host) or True)
    model = {
        "missing_dir": tmp_path / "no-such-model",
        "empty_dir": tmp_path,
        "hub_id": "cityviz-tests/no-such-model-anywhere",
    }[which]
    with pytest.raises(SegmenterUnavailable) as info:
        HFSegmenter(model)
    message = str(info.value)
    assert "--segmenter hf:" in message
    assert "hf download" in message
    assert "\n" not in message  # one paragraph
    if which == "hub_id":
        assert "hf download cityviz-tests/no-such-model-anywhere" in message
    assert probed == []


def test_hf_segmenter_online_mode_fails_fast_when_hub_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    probed: list[str] = []
    monkeypatch.setattr(segment, "_hub_reachable", lambda host: probed.append(host) or False)
    with pytest.raises(SegmenterUnavailable, match=r"huggingface\.co is unreachable"):
        HFSegmenter("cityviz-tests/no-such-model-anywhere")
    assert probed == ["huggingface.co"]


# ---------------------------------------------------------------- specs


def test_segmenter_from_spec_forms(
    tmp_path: Path, tiny_segformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tiny_segformer[0]
    labels = {"a": tmp_path / "a.png"}

    assert segmenter_from_spec("none") is None
    seg = segmenter_from_spec("annotations", label_paths=labels, class_names=ADE20K_CLASSES)
    assert isinstance(seg, AnnotationSegmenter)
    assert seg.class_names == ADE20K_CLASSES
    hf = segmenter_from_spec(f"hf:{directory}")
    assert isinstance(hf, HFSegmenter)
    assert hf.name == directory.name
    # "hf" loads DEFAULT_HF_MODEL; point it at an id no cache holds to see the routing offline.
    monkeypatch.setattr(segment, "DEFAULT_HF_MODEL", "cityviz-tests/default-model")
    with pytest.raises(SegmenterUnavailable, match="cityviz-tests/default-model"):
        segmenter_from_spec("hf")

    with pytest.raises(ValueError, match="no label maps"):
        segmenter_from_spec("annotations", label_paths={}, class_names=ADE20K_CLASSES)
    with pytest.raises(ValueError, match="hf:<hub-id-or-directory>"):
        segmenter_from_spec("deeplab")
    with pytest.raises(ValueError, match="after 'hf:'"):
        segmenter_from_spec("hf:")
    with pytest.raises(ValueError, match="--reduce-labels applies to --segmenter annotations"):
        segmenter_from_spec(f"hf:{directory}", reduce_labels=True)
    reduced = segmenter_from_spec(
        "annotations", label_paths=labels, class_names=ADE20K_CLASSES, reduce_labels=True
    )
    assert isinstance(reduced, AnnotationSegmenter) and reduced.reduce_labels
    assert "segmenter" in NO_SEGMENTER_MESSAGE
