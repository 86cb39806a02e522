"""Tiny random-weight LPIPS and CLIP models written to disk by the tests themselves (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

LPIPS_CHANNELS = (64, 192, 384, 256, 256)
ALEXNET_CONV_INDICES = (0, 3, 6, 8, 10)  # torchvision's numbering of AlexNet's convolutions
ALEXNET_RELU_TAPS = (1, 4, 7, 9, 11)  # the ReLUs whose outputs LPIPS compares


def alexnet_features() -> nn.Sequential:
    """AlexNet's feature trunk laid out as torchvision numbers it."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )


def write_random_lpips(path: Path, seed: int = 0):
    """Random trunk + non-negative heads (published heads are non-negative) in the documented key layout.
    Returns (trunk, heads, tensors) so a test can recompute the distance independently."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    trunk = alexnet_features().eval()
    heads = [torch.rand(1, c, 1, 1) / c for c in LPIPS_CHANNELS]
    torch.random.set_rng_state(generator_state)
    tensors = {}
    for slice_number, index in enumerate(ALEXNET_CONV_INDICES, start=1):
        tensors[f"net.slice{slice_number}.{index}.weight"] = trunk[index].weight.detach().clone()
        tensors[f"net.slice{slice_number}.{index}.bias"] = trunk[index].bias.detach().clone()
    for i, head in enumerate(heads):
        tensors[f"lin{i}.model.1.weight"] = head
    save_file(tensors, str(path))
    return trunk, heads, tensors


def byte_level_vocab() -> dict[str, int]:
    """Every byte's byte-level symbol, alone and word-final, plus CLIP's specials: a BPE with no merges."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return vocab


def write_tiny_clip(directory: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide CLIP (32×32 images) with tokenizer and PIL image processor, in Hugging Face layout."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab = byte_level_vocab()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = CLIPModel(config)
    torch.random.set_rng_state(generator_state)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(directory)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory
