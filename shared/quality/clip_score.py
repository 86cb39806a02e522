"""CLIP image–text similarity (paper §IV-D, "CLIP-sim"): cosine of the projected embeddings.

The model comes only from a local directory in Hugging Face layout (config.json, weights,
preprocessor_config.json, tokenizer files), read with `local_files_only=True`: nothing is
downloaded. Images go through `CLIPImageProcessorPil` (the PIL backend: no torchvision needed).
The value is the raw cosine in [-1, 1] — not CLIPScore's 2.5·max(cos, 0) or the ×100 logit scale.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import torch


class ClipSimilarity:
    """Holds a CLIP model, its image processor and tokenizer; scores RGB frames against a prompt."""

    def __init__(self, model, image_processor, tokenizer, device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.device = torch.device(device)

    @classmethod
    def from_directory(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "ClipSimilarity":
        from transformers import AutoTokenizer, CLIPModel
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        path = os.fspath(directory)
        if not os.path.exists(path):
            raise FileNotFoundError(f"CLIP weights directory not found: {path!r}")
        if not os.path.isdir(path):
            raise ValueError(f"CLIP weights must be a local model directory (config.json, weights, tokenizer), got the file {path!r}")
        try:
            model = CLIPModel.from_pretrained(path, local_files_only=True)
            processor = CLIPImageProcessorPil.from_pretrained(path, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"CLIP directory {path!r} cannot be loaded as a local CLIP model: {exc}") from exc
        return cls(model, processor, tokenizer, device)

    @torch.inference_mode()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        if not prompt or not prompt.strip():
            raise ValueError("CLIP similarity needs a non-empty prompt")
        tokens = self.tokenizer([prompt], padding=True, truncation=True, return_tensors="pt").to(self.device)
        features = self.model.get_text_features(**tokens).pooler_output
        return torch.nn.functional.normalize(features.float(), dim=-1)[0]

    @torch.inference_mode()
    def image_embeddings(self, frames: Iterable[np.ndarray]) -> torch.Tensor:
        from PIL import Image

        images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        features = self.model.get_image_features(pixel_values=pixels).pooler_output
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def cosines(self, frames: Iterable[np.ndarray], text_embedding: torch.Tensor) -> np.ndarray:
        """Cosine of each frame's embedding with a precomputed `text_embedding` (float64, in [-1, 1])."""
        cosines = self.image_embeddings(frames) @ text_embedding
        return cosines.clamp(-1.0, 1.0).cpu().numpy().astype(np.float64)  # the clamp only removes float round-off

    def similarities(self, frames: Iterable[np.ndarray], prompt: str) -> np.ndarray:
        """Cosine similarity of each H×W×3 uint8 RGB frame with the prompt (float64 array, values in [-1, 1])."""
        return self.cosines(frames, self.text_embedding(prompt))
