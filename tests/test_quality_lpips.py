"""LPIPS-Alex from a safetensors file: key layout, properties, and errors (random weights saved by the test)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from shared.quality.lpips import LPIPS, file_key_map, frame_to_tensor, load_lpips, lpips_distance
from tests.support.quality_clips import clip_frames
from tests.support.quality_models import ALEXNET_RELU_TAPS as TAPS
from tests.support.quality_models import write_random_lpips


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("lpips") / "lpips_alex.safetensors"
    trunk, heads, tensors = write_random_lpips(path)
    return trunk, heads, tensors, path


def reference_distance(trunk: torch.nn.Sequential, heads, x: torch.Tensor, y: torch.Tensor) -> float:
    """LPIPS written out independently of the module under test, from the trunk as torchvision lays it out."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    hx, hy, total = (x - shift) / scale, (y - shift) / scale, 0.0
    for index, layer in enumerate(trunk):
        hx, hy = layer(hx), layer(hy)
        if index in TAPS:
            nx = hx / (hx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = hy / (hy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total += float(F.conv2d((nx - ny) ** 2, heads[TAPS.index(index)]).mean())
    return total


@pytest.fixture(scope="module")
def frames():
    clip = clip_frames("carphone_pristine.mp4", 4, size=(96, 80))
    return clip[0], clip[3]


def test_identical_images_are_at_distance_zero(reference, frames):
    model = load_lpips(reference[3])
    assert lpips_distance(model, frames[0], frames[0]) == 0.0


def test_distance_is_positive_symmetric_and_matches_the_layout(reference, frames):
    trunk, heads, _, path = reference
    model = load_lpips(path)
    a, b = frames
    d_ab, d_ba = lpips_distance(model, a, b), lpips_distance(model, b, a)
    assert d_ab > 0
    assert d_ab == pytest.approx(d_ba, rel=1e-5)
    with torch.inference_mode():
        expected = reference_distance(trunk, heads, frame_to_tensor(a), frame_to_tensor(b))
    assert d_ab == pytest.approx(expected, rel=1e-4)


def test_larger_change_gives_larger_distance(reference, frames):
    model = load_lpips(reference[3])
    a = frames[0]
    slight = np.clip(a.astype(int) + 4, 0, 255).astype(np.uint8)
    assert 0 < lpips_distance(model, a, slight) < lpips_distance(model, a, 255 - a)


def test_batch_forward_gives_one_distance_per_image(reference, frames):
    model = load_lpips(reference[3])
    x = torch.cat([frame_to_tensor(frames[0]), frame_to_tensor(frames[1])])
    with torch.inference_mode():
        distances = model(x, x.flip(0))
    assert distances.shape == (2,)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="LPIPS weights not found: .*nowhere.safetensors"):
        load_lpips(tmp_path / "nowhere.safetensors")


def test_pickle_file_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "alex.pth"
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, path)  # a pickle-based checkpoint
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_lpips(path)


def test_wrong_layout_names_missing_and_unexpected_keys(reference, tmp_path):
    tensors = dict(reference[2])
    tensors.pop("lin3.model.1.weight")
    tensors["features.0.weight"] = torch.zeros(1)
    path = tmp_path / "vgg_like.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"missing \['lin3.model.1.weight'\].*unexpected \['features.0.weight'\]"):
        load_lpips(path)


def test_wrong_shape_is_reported(reference, tmp_path):
    tensors = dict(reference[2])
    tensors["lin0.model.1.weight"] = torch.zeros(1, 32, 1, 1)
    path = tmp_path / "bad_shape.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match="wrong shape"):
        load_lpips(path)


def test_heads_under_their_module_list_name_are_accepted(reference, frames, tmp_path):
    tensors = {(k.replace("lin", "lins.", 1) if k.startswith("lin") else k): v for k, v in reference[2].items()}
    assert "lins.0.model.1.weight" in tensors and "lin0.model.1.weight" not in tensors
    path = tmp_path / "module_list_heads.safetensors"
    save_file(tensors, str(path))
    a, b = frames
    assert lpips_distance(load_lpips(path), a, b) == pytest.approx(lpips_distance(load_lpips(reference[3]), a, b))


def test_two_different_tensors_for_one_head_are_refused(reference, tmp_path):
    tensors = dict(reference[2])
    tensors["lins.2.model.1.weight"] = tensors["lin2.model.1.weight"] * 2
    path = tmp_path / "conflicting_heads.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match="two different tensors for head 2"):
        load_lpips(path)


def test_key_map_covers_every_parameter():
    assert sorted(file_key_map().values()) == sorted(name for name, _ in LPIPS().named_parameters())
