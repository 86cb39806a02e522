"""The naive baseline: diffusers' own DreamLiteMobilePipeline over a model bundle, one frame per call.

Used as the equivalence reference in tests and as the baseline every speed figure is a ratio to.
The stock Qwen3VLProcessor insists on a video processor (which needs torchvision); the pipeline
only ever sends images, so it gets an image-only processor with the same call and outputs.
"""

from __future__ import annotations

import torch
from transformers import BatchFeature

from .profiles import ModelBundle, VisionPreprocess


class ImageOnlyEditProcessor:
    """Qwen3-VL processor for text + images: expands `<|image_pad|>` per image grid, tokenises, patchifies."""

    image_token = "<|image_pad|>"

    def __init__(self, tokenizer, vision: VisionPreprocess):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.tokenizer = tokenizer
        self.image_processor = Qwen2VLImageProcessorPil(
            patch_size=vision.patch_size, temporal_patch_size=vision.temporal_patch_size, merge_size=vision.merge_size,
            image_mean=list(vision.image_mean), image_std=list(vision.image_std),
            size={"shortest_edge": vision.min_pixels, "longest_edge": vision.max_pixels},
        )
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    def __call__(self, text: list[str], images: list, padding: bool = True, return_tensors: str = "pt") -> BatchFeature:
        image_inputs = self.image_processor(images=images, return_tensors="pt")
        merge = self.image_processor.merge_size**2
        expanded = []
        for sample, grid in zip(text, image_inputs["image_grid_thw"]):
            expanded.append(sample.replace(self.image_token, self.image_token * int(grid.prod() // merge), 1))
        tokens = self.tokenizer(expanded, padding=padding, return_tensors=return_tensors)
        tokens["mm_token_type_ids"] = (tokens["input_ids"] == self.image_token_id).int()
        return BatchFeature(data={**tokens, **image_inputs})


def build_reference_pipeline(bundle: ModelBundle, vision: VisionPreprocess | None = None):
    """DreamLiteMobilePipeline over the bundle's modules (shared weights, no copies)."""
    from diffusers import DreamLiteMobilePipeline

    pipe = DreamLiteMobilePipeline(
        text_encoder=bundle.text_encoder, tokenizer=bundle.tokenizer,
        processor=ImageOnlyEditProcessor(bundle.tokenizer, vision or bundle.vision), vae=bundle.vae,
        unet=bundle.unet, scheduler=bundle.scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_noise(seed: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Initial noise as the pipeline draws it from a CPU generator seeded with `seed`."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype)
