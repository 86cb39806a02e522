"""StyleCast configuration: one pydantic model, loaded in layers.

Precedence, lowest first: field defaults < YAML file < environment variables < CLI overrides.

- YAML: a mapping with the sections `model`, `engine`, `streams`, `ingest`, `service`.
- Environment: `STYLECAST_<SECTION>__<FIELD>` (nesting with `__`, case-insensitive field names),
  e.g. `STYLECAST_ENGINE__BATCH=16`; list items by index, `STYLECAST_STREAMS__0__PROMPT=…`;
  a list or section as JSON, `STYLECAST_STREAMS='[{"name": "cam", …}]'`. Variables whose first
  part is not a section (`STYLECAST_CONFIG`, `STYLECAST_RUN_ID`, …) are not settings.
  `STYLECAST_CONFIG` names the YAML file when `load_settings` gets no path.
- Overrides: a dict of dotted keys, `{"engine.batch": 16, "streams.0.prompt": "…"}`.

Errors come out as `ConfigError`, one readable line per problem naming the field path and the bad
value (`engine.size: 500 is not a multiple of 64`). Credentials in source/sink URLs and the API
token never appear in reprs, dumps or errors; `.reveal()` / `reveal_secrets=True` are the only ways
to get them back.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import json
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

ENV_PREFIX = "STYLECAST_"
CONFIG_PATH_ENV = "STYLECAST_CONFIG"

# --------------------------------------------------------------------------------------------------
# Credential redaction
# --------------------------------------------------------------------------------------------------

from shared.redact import redact_url  # noqa: E402,F401  (re-exported: settings users redact through here)

REDACTED = "***"


def _reveal_requested(info: Any) -> bool:
    context = getattr(info, "context", None)
    return bool(context) and bool(context.get("reveal_secrets"))


class SecretUrl:
    """A source/sink address that prints redacted everywhere; `.reveal()` gives the real value.

    As a pydantic field type it validates from `str` and dumps the redacted text, unless the dump is
    made with `context={"reveal_secrets": True}` (used only to hand settings to a child process or
    across the private bus).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"SecretUrl needs a str, got {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The real value, credentials included. Use it only to open the source or sink."""
        return self._value

    @property
    def redacted(self) -> str:
        """The value with credentials hidden (what `str()` returns)."""
        return redact_url(self._value)

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"SecretUrl({self.redacted!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretUrl) and other._value == self._value

    def __hash__(self) -> int:
        return hash((SecretUrl, self._value))

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.union_schema(
            [core_schema.is_instance_schema(cls), core_schema.no_info_after_validator_function(cls, core_schema.str_schema())],
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v, info: v.reveal() if _reveal_requested(info) else v.redacted,
                info_arg=True,
                return_schema=core_schema.str_schema(),
            ),
        )


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """Invalid configuration. `problems` holds one line per problem; `str()` joins them with newlines."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class FieldProblem(ValueError):
    """Raised by cross-field validators to blame a sub-field (`subpath`) rather than the whole model."""

    def __init__(self, subpath: tuple[str, ...], message: str) -> None:
        self.subpath = subpath
        super().__init__(message)


# --------------------------------------------------------------------------------------------------
# Reusable field types
# --------------------------------------------------------------------------------------------------

STREAM_NAME_RE = re.compile(r"[a-z0-9_-]{1,64}")


def check_stream_name(name: str) -> str:
    """Validate an operator-chosen stream label (also used as a metric label and segment-name part)."""
    if not STREAM_NAME_RE.fullmatch(name):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise ValueError(f"{shown!r} is not a valid stream name: use 1-64 characters from a-z, 0-9, '_' and '-'")
    return name


StreamName = Annotated[str, AfterValidator(check_stream_name)]

_SYNTHETIC_PROFILES = ("synthetic-tiny", "synthetic-full")
_WEBCAM_RE = re.compile(r"/dev/video[0-9]+")
_RTSP_SCHEMES = ("rtsp", "rtsps")


class SourceKind(enum.StrEnum):
    """What kind of input a stream reads."""

    FILE = "file"
    RTSP = "rtsp"
    WEBCAM = "webcam"


def classify_source(source: str) -> SourceKind:
    """Tell a source's kind from its text (no I/O): `rtsp://…`, `/dev/videoN`, else a file path."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://", source):
        scheme = source.split("://", 1)[0].lower()
        if scheme in _RTSP_SCHEMES:
            return SourceKind.RTSP
        raise ValueError(
            f"{redact_url(source)!r} has unsupported scheme {scheme!r}: use a file path, rtsp://..., or /dev/videoN"
        )
    if _WEBCAM_RE.fullmatch(source):
        return SourceKind.WEBCAM
    return SourceKind.FILE


def _check_rtsp_url(url: str, what: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        # urlsplit's own message may quote part of a mis-encoded password: never show it.
        raise ValueError(
            f"{redact_url(url)!r} is not a valid {what} URL (check host and port; percent-encode "
            "'@', '/' and ':' in the user name or password)"
        ) from None
    if not parts.hostname:
        raise ValueError(f"{redact_url(url)!r} is not a valid {what} URL: no host")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_RUNTIME_DIR/stylecast` when that is set and exists, else `/tmp/stylecast-<uid>`."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        return Path(xdg) / "stylecast"
    tmp = env.get("TMPDIR") or "/tmp"
    return Path(tmp) / f"stylecast-{os.getuid()}"


class _Section(BaseModel):
    """Shared model config: unknown keys are errors, inputs never echoed by pydantic itself."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, validate_default=False)


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


class ModelSettings(_Section):
    """Which weights to run, where, and how."""

    profile: str = Field(
        "synthetic-tiny",
        description="Model profile: 'synthetic-tiny' (toy widths, CPU tests), 'synthetic-full' (real "
        "architectures, random weights; for benchmarks), or the path of a DreamLite-mobile checkpoint "
        "directory in diffusers layout.",
    )
    taesd_path: Path | None = Field(
        None, description="Optional TAESDXL (AutoencoderTiny) weights directory or file; random VAE weights when unset."
    )
    device: str = Field("auto", description="Torch device: 'auto' (CUDA if present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="Compute dtype: 'auto' is bfloat16 on CUDA and float32 on CPU. float16 is not offered: the encoder overflows it."
    )
    compile_mode: Literal["auto", "none", "default", "max-autotune-no-cudagraphs"] = Field(
        "auto",
        description="torch.compile mode for the parts in compile_parts: 'auto' is default on CUDA and none on CPU. "
        "The engine captures its own CUDA graphs per batch bucket, so no cudagraph mode is offered.",
    )
    compile_parts: list[Literal["unet", "text_encoder", "vae"]] = Field(
        ["unet", "text_encoder", "vae"],
        description="What compile_mode compiles. Each part costs start-up time per batch bucket (on an H100 about 85 s "
        "for the U-Net and 50 s for the text encoder); leaving one out starts faster and runs it uncompiled.",
    )
    autotune: list[Literal["unet", "text_encoder"]] = Field(
        [],
        description="Compiled parts (of compile_parts, with compile_mode default) whose matrix products torch.compile "
        "autotunes: each shape's cuBLAS call is timed against Triton templates that also fuse the elementwise work after "
        "it, and the quicker is kept. The same arithmetic in other kernels. Costs minutes of start-up per part and batch "
        "bucket the first time; a compile cache that outlives the process (TORCHINDUCTOR_CACHE_DIR, which the container "
        "image keeps on a volume) keeps the choices.",
    )
    compile_buckets: Literal["all", "largest"] = Field(
        "all",
        description="Which batch buckets (engine.buckets) the compile covers: 'all', or only the 'largest' (engine.batch), "
        "so start-up pays one compile however many buckets there are and smaller batches run uncompiled, still as CUDA "
        "graphs (slower per frame, but they run when few frames wait).",
    )
    compile_refresh: Literal["batch", "every_size"] = Field(
        "batch",
        description="A conditioning refresh computes a stream's own rows, padded to a power of two. 'batch' compiles "
        "only the full batch (smaller shares, as several live streams have, run uncompiled in CUDA graphs); "
        "'every_size' compiles the smaller sizes too, with one more compile at start-up (about 80 s on an H100), "
        "for about 35% less time per small refresh.",
    )
    token_shapes: Literal["dynamic", "static"] = Field(
        "dynamic",
        description="How the compiled text encoder and U-Net treat the prompt's token count. 'dynamic': one compile serves "
        "every prompt length (tokens padded to multiples of 8), so a live prompt change to a longer or shorter prompt "
        "costs a CUDA-graph capture, not a compile. 'static': each token bucket (text encoder: multiples of 16; U-Net: "
        "128/256/512/1024) compiles on first use, and every stream of the worker waits for that compile (168 s on an H100 "
        "at B=16). Same output; the dynamic compile costs about 90 s more start-up on a fresh H100 machine.",
    )
    token_graphs: int = Field(
        32,
        ge=1,
        le=1024,
        description="Prompt lengths (multiples of 8 tokens) whose CUDA graphs the text encoder and the U-Net keep; a "
        "new length beyond this releases the least recently used one's graphs (each length holds its own static "
        "buffers, about 25 MB at B=16 for a short prompt). Set it above the number of distinct prompt lengths in use "
        "at once, or batches recapture: about 0.75 s each on an H100 at B=16.",
    )
    fp8: list[Literal["text_encoder", "unet"]] = Field(
        [],
        description="Parts whose large linear layers (both sizes multiples of 16, at least 512) multiply in FP8 e4m3 "
        "with per-row scales: an APPROXIMATION, off by default, for GPUs of compute capability 8.9+ (Ada, Hopper). "
        "benchmarks/fp8_accuracy.py reports the cosine similarity of its outputs against bf16.",
    )
    fused_qkv: bool = Field(
        False,
        description="The text encoder's language model computes each layer's query, key and value in one matrix product "
        "(the same weights stacked: the same function, no extra memory). Off: timed together with depthwise 'taps', "
        "the engine ran 9% slower on an H100 at B=16; alone it is not yet timed in a process of its own. Not with "
        "fp8 text_encoder.",
    )
    channels_last: list[Literal["unet", "vae"]] = Field(
        ["vae"], description="Parts whose convolutions run channels-last on CUDA (a memory-layout change; the values are the same)."
    )
    group_norm: Literal["auto", "native", "two_pass"] = Field(
        "auto",
        description="How the U-Net's GroupNorms are computed: 'native' (torch's kernel) or 'two_pass' (per-channel sums, "
        "then per group, wherever torch.compile traces the U-Net: the same function in far quicker kernels; +5.8% engine "
        "fps on an H200 and +5.6% on an H100 at B=8; uncompiled calls keep torch's kernel); 'auto' is two_pass when the "
        "U-Net is compiled and native otherwise.",
    )
    depthwise: Literal["cudnn", "taps"] = Field(
        "cudnn",
        description="How the compiled U-Net computes its 3×3 depthwise convolutions: 'cudnn', or 'taps' (nine shifted "
        "multiply-adds that inductor turns into one generated kernel: the same sums; cuDNN ran them at about a fifth "
        "of the memory rate they need on an H200). Off: frames bit-identical on an H100, but together with fused_qkv "
        "the engine ran 9% slower at B=16. Uncompiled calls use cuDNN either way.",
    )
    cross_attention: Literal["bias", "key_channel", "key_channel_fused_kv"] = Field(
        "bias",
        description="How the U-Net's cross-attention masks its padded text tokens: 'bias' (diffusers' additive bias, "
        "which SDPA expands per query) or 'key_channel' (the same logits, with the bias carried in one extra "
        "query/key channel so no bias tensor is expanded); 'key_channel_fused_kv' also computes every "
        "cross-attention's keys and values in one matrix product. Same function up to float rounding; on an H100 "
        "key_channel_fused_kv moved the engine +0.4% at B=8 (noise).",
    )
    cuda_graphs: bool = Field(True, description="Capture each engine stage as a CUDA graph per batch bucket (CUDA only).")
    gpus: int = Field(
        1, ge=0, le=64,
        description="GPU workers on this node, one per GPU (cuda:0, cuda:1, ...); 0 = one per visible CUDA GPU. "
        "Streams are balanced across them. With device 'cpu', that many CPU workers (for testing the plumbing).",
    )

    @field_validator("profile")
    @classmethod
    def _check_profile(cls, value: str) -> str:
        if value in _SYNTHETIC_PROFILES:
            return value
        path = Path(value).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"{value!r} is neither 'synthetic-tiny', 'synthetic-full' nor an existing checkpoint directory"
            )
        return str(path.resolve())

    @field_validator("taesd_path")
    @classmethod
    def _check_taesd(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        value = value.expanduser()
        if not value.exists():
            raise ValueError(f"'{value}' does not exist")
        return value.resolve()

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", value):
            raise ValueError(f"{value!r} is not a device: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return value

    @property
    def is_synthetic(self) -> bool:
        """True when the weights are random (anything built on them must say so)."""
        return self.profile in _SYNTHETIC_PROFILES


LLLiteHooks = Literal["none", "down_blocks", "mid_block", "up_blocks", "all"]


class EngineSettings(_Section):
    """Shapes and schedule of the stylisation engine (paper Algorithm 1)."""

    size: int = Field(512, description="Square working size S in pixels: a multiple of 64 from 64 to 1024.")
    batch: int = Field(8, ge=1, le=64, description="Batch size B: frames per U-Net call (1..64).")
    steps: int = Field(1, ge=1, le=8, description="Denoising steps K (1..8); K=1 is the single-update edit.")
    lllite_hooks: LLLiteHooks = Field(
        "down_blocks", description="ControlNet-LLLite hook subset: none, down_blocks, mid_block, up_blocks or all."
    )
    lllite_weights: Path | None = Field(
        None, description="LLLite weights (kohya-style safetensors). Unset: zero-initialised adapter (no temporal effect)."
    )
    lllite_multiplier: float = Field(
        1.0, ge=0.0, le=10.0, allow_inf_nan=False, description="Scale of the LLLite residual added to hooked layers."
    )
    cond_refresh: int = Field(8, ge=1, description="Rebuild the LLLite conditioning every N batches (N >= 1).")
    refresh_on_scene_cut: bool = Field(
        True,
        description="Also rebuild it at a scene cut that ingest detects in a stream, and in the batch after (the "
        "paper's recommendation). Each refresh waits for optical flows; off gives the paper's periodic schedule only.",
    )
    text_encoder_mode: Literal["per_frame", "batch_one", "refresh_every"] = Field(
        "per_frame",
        description="Text-encoder use: per_frame (exact), batch_one (one representative frame per batch, "
        "broadcast), refresh_every (reuse the embedding for text_encoder_refresh batches). The last two approximate.",
    )
    text_encoder_refresh: int = Field(
        4, ge=1, description="N for text_encoder_mode=refresh_every: batches that reuse one text-encoder output."
    )
    encoder_image_size: int = Field(
        256, description="Side of the image given to the text encoder, in pixels (multiple of 32; the paper uses 256)."
    )
    max_batch_wait_ms: float = Field(
        50.0,
        ge=0.0,
        le=10_000.0,
        allow_inf_nan=False,
        description="Latency-aware batching: dispatch a partial batch once its oldest frame has waited this long (ms) "
        "and at most one batch is on the GPU (an idle GPU takes what waits at once when a live stream waits; frames "
        "of lossless file streams only get this long to fill the batch, and go partial only once the GPU is idle).",
    )
    live_max_queue_ms: float | None = Field(
        None,
        gt=0.0,
        le=60_000.0,
        allow_inf_nan=False,
        description="Live streams only: a frame that has waited this long (ms, since ingest) for a batch is dropped, "
        "counted as 'late', so a GPU worker that cannot keep up trades frames for latency. Off (null) by default: a "
        "live stream's queue is bounded by two batches of frames, which at B=32 and 30 fps is about 2 s.",
    )
    buckets: list[int] = Field(
        default_factory=list,
        description="Batch sizes compiled and captured at start-up besides `batch` (each 1..batch); a partial batch "
        "pads to the smallest that fits. Small buckets (e.g. [1, 2, 4]) cut latency for a few live cameras; each "
        "costs one more compile at start-up.",
    )
    flow_backend: Literal["auto", "opencv", "torch"] = Field(
        "auto",
        description="Where a refresh's Farnebäck flows run: 'opencv' on the host's cores (the flow process), 'torch' on "
        "the GPU worker's device (no wait for host cores; no flow process is started), 'auto' torch on CUDA and opencv on "
        "the CPU. Both compute the same flows: on bikes at 512² they differ by 0.0002 px on average (float rounding; "
        "tests/test_farneback_torch.py).",
    )
    cuda_streams: Literal[2, 3] = Field(
        2,
        description="CUDA streams of the GPU pipeline. 2: a side stream (upload, VAE encode, text encoder) beside the "
        "main one (refresh, U-Net, decode), the paper's layout. 3: a refresh's flows move to the side stream and the "
        "decode and download to a stream of their own, so the U-Net's stream carries only the U-Net and the refresh's "
        "conditioning. Same results either way; opt-in: +0.5% on an H100 at B=8, where the GPU is already full. "
        "No effect on the CPU.",
    )
    pipeline_depth: int = Field(
        3, ge=1, le=8,
        description="Batches queued ahead of the GPU's side stage; the worker keeps at most depth + 1 batches in "
        "flight. Deeper gives a refresh batch's optical flows more time before the GPU needs them, at the cost of "
        "latency under load (an idle GPU still takes a lone frame at once).",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Default noise seed; a stream's own seed overrides it.")

    @field_validator("size")
    @classmethod
    def _check_size(cls, value: int) -> int:
        if value % 64:
            raise ValueError(f"{value} is not a multiple of 64")
        if not 64 <= value <= 1024:
            raise ValueError(f"{value} is outside 64..1024")
        return value

    @field_validator("encoder_image_size")
    @classmethod
    def _check_encoder_size(cls, value: int) -> int:
        if value % 32 or not 32 <= value <= 1024:
            raise ValueError(f"{value} is not a multiple of 32 in 32..1024 (patch 16 x merge 2)")
        return value

    @field_validator("lllite_weights")
    @classmethod
    def _check_weights(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        value = value.expanduser()
        if not value.is_file():
            raise ValueError(f"'{value}' is not an existing file")
        return value.resolve()


class SinkSettings(_Section):
    """One output of a stream."""

    type: Literal["mp4", "rtsp", "hls", "mjpeg"] = Field(
        description="Sink kind: mp4 (file), rtsp (push to a server), hls (playlist + segments), mjpeg (browser preview)."
    )
    target: SecretUrl | None = Field(
        None,
        description="mp4: output file (*.mp4); rtsp: rtsp://host[:port]/path to push to; hls: playlist path (*.m3u8), "
        "segments beside it; mjpeg: optional host:port of a standalone preview server (default: served by the API).",
    )
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] | None = Field(
        None,
        description="x264 preset of an mp4/rtsp/hls sink (default superfast). Faster presets spend less CPU per frame "
        "for bigger output; the encoder must keep up with the GPU or the stream falls behind.",
    )
    crf: int | None = Field(None, ge=0, le=51, description="x264 constant rate factor of an mp4/rtsp/hls sink (default 20; lower is better).")
    encoder_threads: int | None = Field(
        None, ge=1, le=64,
        description="x264 threads of an mp4/rtsp/hls sink (default 8 frame threads for files, FFmpeg's choice for live pushes).",
    )

    @model_validator(mode="after")
    def _check_target(self) -> SinkSettings:
        raw = self.target.reveal() if self.target is not None else None
        if self.type == "mjpeg" and (chosen := [f for f in ("preset", "crf", "encoder_threads") if getattr(self, f) is not None]):
            raise FieldProblem((chosen[0],), "applies to mp4, rtsp and hls sinks; mjpeg has no H.264 encoder")
        if self.type == "mjpeg":
            if raw is not None and not re.fullmatch(r"[A-Za-z0-9.\-]+:[0-9]{1,5}", raw):
                raise FieldProblem(("target",), f"{redact_url(raw)!r} is not host:port")
            return self
        if not raw:
            raise FieldProblem(("target",), f"is required for an {self.type} sink")
        if self.type == "rtsp":
            if classify_source(raw) is not SourceKind.RTSP:
                raise FieldProblem(("target",), f"{redact_url(raw)!r} is not an rtsp:// URL")
            try:
                _check_rtsp_url(raw, "rtsp sink")
            except ValueError as exc:
                raise FieldProblem(("target",), str(exc)) from None
            return self
        suffix = ".mp4" if self.type == "mp4" else ".m3u8"
        if "://" in raw:
            raise FieldProblem(("target",), f"{redact_url(raw)!r} is a URL; a {self.type} sink writes a local file")
        path = Path(raw).expanduser()
        if path.suffix.lower() != suffix:
            raise FieldProblem(("target",), f"'{raw}' does not end in {suffix}")
        if path.is_dir():
            raise FieldProblem(("target",), f"'{raw}' is a directory")
        self.target = SecretUrl(str(path.resolve()))
        return self

    def encoder(self) -> dict:
        """The encoder options set here, as H264Settings fields (what is unset keeps the sink kind's default)."""
        chosen = {"preset": self.preset, "crf": self.crf, "threads": self.encoder_threads}
        return {k: v for k, v in chosen.items() if v is not None}

    @property
    def is_file(self) -> bool:
        """True for sinks that write local files (mp4, hls)."""
        return self.type in ("mp4", "hls")


class StreamSettings(_Section):
    """One input stream and its outputs."""

    name: StreamName = Field(
        description="Operator-chosen label, unique: 1-64 of a-z 0-9 _ -. Used in metrics, API paths and segment names."
    )
    source: SecretUrl = Field(
        description="Input: a video file path, an rtsp:// or rtsps:// URL, or a webcam device such as /dev/video0. "
        "Credentials in the URL are never printed."
    )
    prompt: str = Field(max_length=2000, description="Style instruction, e.g. 'make it an oil painting' (1-2000 characters).")
    live: bool | None = Field(
        None,
        description="Live sources drop the oldest waiting frame when the GPU is behind; non-live ones wait. "
        "Default: true for rtsp/webcam, false for files. Cameras cannot be non-live.",
    )
    pace: bool = Field(
        False, description="Files only: play at the file's native frame rate instead of as fast as possible."
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Noise seed of this stream; default engine.seed.")
    sinks: list[SinkSettings] = Field(default_factory=list, description="Outputs of this stream (may be empty).")

    @field_validator("source", mode="before")
    @classmethod
    def _check_source(cls, value: Any) -> SecretUrl:
        if isinstance(value, SecretUrl):
            value = value.reveal()
        if not isinstance(value, str):
            raise ValueError(f"expected a file path, rtsp:// URL or /dev/videoN, got {type(value).__name__}")
        if not value.strip():
            raise ValueError("must not be empty")
        kind = classify_source(value)
        if kind is SourceKind.RTSP:
            _check_rtsp_url(value, "rtsp source")
            return SecretUrl(value)
        if kind is SourceKind.WEBCAM:
            return SecretUrl(value)
        path = Path(value).expanduser()
        if not path.exists():
            raise ValueError(f"{value!r} does not exist")
        if not path.is_file():
            raise ValueError(f"{value!r} is not a file")
        return SecretUrl(str(path.resolve()))

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _resolve_liveness(self) -> StreamSettings:
        kind = self.kind
        if kind is SourceKind.FILE:
            if self.live is None:
                self.live = False
            return self
        if self.live is False:
            raise FieldProblem(("live",), f"false is not possible for {kind.value} source {self.source}: a camera cannot wait")
        if self.pace:
            raise FieldProblem(("pace",), f"true applies to file sources only, not to {kind.value} source {self.source}")
        self.live = True
        return self

    @property
    def kind(self) -> SourceKind:
        """File, RTSP or webcam."""
        return classify_source(self.source.reveal())


class IngestSettings(_Section):
    """How sources are opened and reopened."""

    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP lower transport.")
    connect_timeout_s: float = Field(5.0, gt=0, le=300, allow_inf_nan=False, description="RTSP connect timeout (s).")
    read_timeout_s: float = Field(
        5.0, gt=0, le=300, allow_inf_nan=False, description="A live source that delivers no frame for this long is stalled and reconnects (s)."
    )
    reconnect_backoff_initial_s: float = Field(
        0.5, gt=0, le=3600, allow_inf_nan=False, description="First reconnect delay (s); doubles after each failure."
    )
    reconnect_backoff_max_s: float = Field(30.0, gt=0, le=3600, allow_inf_nan=False, description="Largest reconnect delay (s).")
    reconnect_max_attempts: int = Field(
        0, ge=0, description="Failed reconnects in a row before the stream is marked failed; 0 retries forever."
    )

    @model_validator(mode="after")
    def _check_backoff(self) -> IngestSettings:
        if self.reconnect_backoff_max_s < self.reconnect_backoff_initial_s:
            raise FieldProblem(
                ("reconnect_backoff_max_s",),
                f"{self.reconnect_backoff_max_s} is smaller than reconnect_backoff_initial_s ({self.reconnect_backoff_initial_s})",
            )
        return self


class ServiceSettings(_Section):
    """Process plumbing: API, runtime directory, bus, rings, supervision."""

    api_host: str = Field("127.0.0.1", description="Control API bind address. Non-loopback needs service.token.")
    api_port: int = Field(8080, ge=1, le=65535, description="Control API (and /metrics) port.")
    token: SecretStr | None = Field(
        None, description="Bearer token required by the control API (>= 16 characters). Never printed."
    )
    allow_remote_without_token: bool = Field(
        False, description="Allow a non-loopback api_host without a token. Dangerous: anyone on the network controls the service."
    )
    runtime_dir: Path = Field(
        default_factory=default_runtime_dir,
        description="Private directory (mode 0700) for sockets, run records and metrics files. "
        "Default $XDG_RUNTIME_DIR/stylecast, else /tmp/stylecast-<uid>.",
    )
    bus_transport: Literal["ipc", "tcp"] = Field(
        "ipc", description="ZeroMQ transport between processes: ipc (Unix sockets in runtime_dir) or tcp."
    )
    bus_tcp_host: str = Field(
        "127.0.0.1", description="Address the tcp bus binds to. The bus has no authentication: keep it on loopback."
    )
    bus_tcp_base_port: int = Field(
        47100, ge=1024, le=65000, description="First tcp bus port; each endpoint takes base + its index."
    )
    bus_high_water_mark: int = Field(1000, ge=1, le=1_000_000, description="ZeroMQ send/receive high-water mark (messages).")
    bus_linger_ms: int = Field(500, ge=0, le=60_000, description="How long closing a socket may wait to flush queued messages (ms).")
    max_message_bytes: int = Field(
        65536, ge=1024, le=16 * 2**20, description="Largest bus message accepted (bytes); larger ones are rejected and counted."
    )
    ring_slots: int = Field(
        32, ge=2, le=4096, description="Slots per shared-memory ring (per stream and direction); at least engine.batch."
    )
    heartbeat_interval_s: float = Field(1.0, gt=0, le=60, allow_inf_nan=False, description="Heartbeat period of every process (s).")
    heartbeat_timeout_s: float = Field(
        5.0, gt=0, le=600, allow_inf_nan=False, description="A process silent this long is restarted (s); > 2 x interval."
    )
    startup_timeout_s: float = Field(
        900.0, gt=0, le=7200, allow_inf_nan=False,
        description="A process that has not said ready may stay silent this long (s): compiling and capturing "
        "the GPU worker's batch shapes can hold its heartbeat back for seconds at a time.",
    )
    max_restarts: int = Field(5, ge=0, description="Restarts of one process within restart_window_s before giving up on it.")
    restart_window_s: float = Field(300.0, gt=0, allow_inf_nan=False, description="Window for max_restarts (s).")
    drain_timeout_s: float = Field(
        15.0, gt=0, le=600, allow_inf_nan=False, description="On SIGTERM, how long to wait for accepted frames to be written (s)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level of every process.")

    @field_validator("api_host", "bus_tcp_host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9.\-:]{1,253}", value):
            raise ValueError(f"{value!r} is not a host name or IP address")
        return value

    @field_validator("token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("too short: use at least 16 characters")
        return value

    @field_validator("runtime_dir")
    @classmethod
    def _check_runtime_dir(cls, value: Path) -> Path:
        value = value.expanduser()
        if not value.is_absolute():
            raise ValueError(f"'{value}' is not an absolute path")
        return value

    @field_serializer("token", when_used="always")
    def _dump_token(self, value: SecretStr | None, info: Any) -> str | None:
        if value is None:
            return None
        return value.get_secret_value() if _reveal_requested(info) else "**********"

    @model_validator(mode="after")
    def _check_service(self) -> ServiceSettings:
        if not _is_loopback(self.api_host) and self.token is None and not self.allow_remote_without_token:
            raise FieldProblem(
                ("api_host",),
                f"{self.api_host!r} is not a loopback address: set service.token, or "
                "service.allow_remote_without_token: true to accept the risk",
            )
        if self.heartbeat_timeout_s <= 2 * self.heartbeat_interval_s:
            raise FieldProblem(
                ("heartbeat_timeout_s",),
                f"{self.heartbeat_timeout_s} must exceed twice heartbeat_interval_s ({self.heartbeat_interval_s})",
            )
        return self


class ShardingSettings(_Section):
    """Spreading configured streams over replicas (e.g. pods of a StatefulSet) without a coordinator."""

    replicas: int = Field(1, ge=1, le=4096, description="Replicas sharing the configured streams (rendezvous hashing by name).")
    ordinal: int | None = Field(
        None, ge=0, description="This replica's index; default: the suffix of STYLECAST_POD_NAME (e.g. stylecast-3 → 3), else 0.",
    )

    @model_validator(mode="after")
    def _check_ordinal(self) -> "ShardingSettings":
        if self.ordinal is not None and self.ordinal >= self.replicas:
            raise FieldProblem(("ordinal",), f"{self.ordinal} is not below replicas ({self.replicas})")
        return self


class Settings(_Section):
    """The whole StyleCast configuration."""

    model: ModelSettings = Field(default_factory=ModelSettings, description="Model weights, device and dtype.")
    engine: EngineSettings = Field(default_factory=EngineSettings, description="Engine shapes, steps and schedules.")
    streams: list[StreamSettings] = Field(default_factory=list, description="Streams to run at start.")
    ingest: IngestSettings = Field(default_factory=IngestSettings, description="Source opening and reconnection.")
    service: ServiceSettings = Field(default_factory=ServiceSettings, description="API, runtime directory, bus, rings, supervision.")
    sharding: ShardingSettings = Field(default_factory=ShardingSettings, description="Spreading streams over replicas.")

    @model_validator(mode="after")
    def _check_cross_section(self) -> Settings:
        seen: dict[str, int] = {}
        for i, stream in enumerate(self.streams):
            if stream.name in seen:
                raise FieldProblem(
                    ("streams", str(i), "name"), f"{stream.name!r} is already used by streams.{seen[stream.name]}"
                )
            seen[stream.name] = i
        targets: dict[str, str] = {}
        for i, stream in enumerate(self.streams):
            for j, sink in enumerate(stream.sinks):
                if sink.target is None or not sink.is_file:
                    continue
                where = f"streams.{i}.sinks.{j}"
                other = targets.setdefault(sink.target.reveal(), where)
                if other != where:
                    raise FieldProblem(
                        ("streams", str(i), "sinks", str(j), "target"), f"'{sink.target}' is already written by {other}"
                    )
        for i, bucket in enumerate(self.engine.buckets):
            if not 1 <= bucket <= self.engine.batch:
                raise FieldProblem(("engine", "buckets", str(i)), f"{bucket} is outside 1..engine.batch ({self.engine.batch})")
        if self.service.ring_slots < self.engine.batch:
            raise FieldProblem(
                ("service", "ring_slots"),
                f"{self.service.ring_slots} is smaller than engine.batch ({self.engine.batch}): "
                "a full batch would overwrite its own frames",
            )
        return self

    def stream_ring_slots(self) -> int:
        """Slots of each stream's input and output ring: at least `service.ring_slots`, and room for the batches
        in flight (frames are released only once written out, so a restarted GPU worker can redo them), the
        next batch filling, one more the egress holds, and the flow source kept one batch longer."""
        in_flight = self.engine.pipeline_depth + 1
        return max(self.service.ring_slots, (in_flight + 2) * self.engine.batch + 2)

    def stream(self, name: str) -> StreamSettings:
        """The stream called `name` (KeyError naming it if absent)."""
        for stream in self.streams:
            if stream.name == name:
                return stream
        raise KeyError(f"no stream named {name!r}")


# --------------------------------------------------------------------------------------------------
# Error formatting
# --------------------------------------------------------------------------------------------------

_SECRET_FIELDS = {"token"}


def _show_value(value: Any, loc: tuple[str, ...]) -> str:
    if loc and loc[-1] in _SECRET_FIELDS:
        return REDACTED
    text = repr(redact_url(value)) if isinstance(value, str) else redact_url(repr(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _unwrap(annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    return annotation


def _annotation_at(path: tuple[str, ...]) -> Any:
    """The field annotation at a dotted path of `Settings` (list indices allowed), or None."""
    annotation: Any = Settings
    for part in path:
        current = _unwrap(annotation)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                return None
            annotation = field.annotation
        elif get_origin(current) is list and part.isdigit():
            annotation = get_args(current)[0]
        else:
            return None
    return annotation


def _is_structured(annotation: Any) -> bool:
    current = _unwrap(annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return True
    return get_origin(current) in (list, dict)


def _is_optional(annotation: Any) -> bool:
    origin = get_origin(annotation)
    return origin in (Union, types.UnionType) and type(None) in get_args(annotation)


def _suggest(path: tuple[str, ...]) -> str:
    parent = _unwrap(_annotation_at(path[:-1]))
    if not (isinstance(parent, type) and issubclass(parent, BaseModel)):
        return ""
    close = difflib.get_close_matches(path[-1], list(parent.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _format_error(error: Mapping[str, Any], provenance: Mapping[tuple[str, ...], str]) -> str:
    # Pydantic inserts union-branch tags like 'function-after[...]' in locations; they mean nothing to a user.
    loc = tuple(str(p) for p in error["loc"] if not (isinstance(p, str) and "[" in p))
    kind = error["type"]
    exc = (error.get("ctx") or {}).get("error")
    if isinstance(exc, FieldProblem):
        loc = loc + exc.subpath
        text = str(exc)
    elif kind == "value_error" and exc is not None:
        text = str(exc)
    elif kind == "missing":
        text = "required field is missing"
    elif kind == "extra_forbidden":
        text = "unknown field" + _suggest(loc)
    else:
        msg = error["msg"]
        text = f"got {_show_value(error.get('input'), loc)}: {msg[:1].lower()}{msg[1:]}"
    line = f"{'.'.join(loc) or '(top level)'}: {text}"
    for n in range(len(loc), 0, -1):
        origin = provenance.get(loc[:n])
        if origin:
            line += f" (set by {origin})"
            break
    return redact_url(line)


def format_validation_error(exc: ValidationError, provenance: Mapping[tuple[str, ...], str] | None = None) -> ConfigError:
    """Turn a pydantic error on any settings model into a `ConfigError` of readable, redacted lines."""
    return ConfigError([_format_error(e, provenance or {}) for e in exc.errors()])


def parse_stream(data: Mapping[str, Any]) -> StreamSettings:
    """Validate one stream definition (e.g. from the API), raising `ConfigError` with readable lines."""
    try:
        return StreamSettings.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc) from None


# --------------------------------------------------------------------------------------------------
# Layered loading
# --------------------------------------------------------------------------------------------------


class _StrictKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path}: is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot read ({exc})") from None
    try:
        data = yaml.load(text, Loader=_StrictKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: the top level must be a mapping of sections "
            f"({', '.join(Settings.model_fields)}), not a {type(data).__name__}"
        )
    return data


def _coerce_text(path: tuple[str, ...], value: Any, origin: str) -> Any:
    """Env/CLI strings: JSON for lists and sections, '' → None for optional fields, else leave to pydantic."""
    if not isinstance(value, str):
        return value
    annotation = _annotation_at(path)
    if annotation is None:
        return value
    if _is_structured(annotation):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{'.'.join(path)}: {origin} is not valid JSON ({exc.msg} at column {exc.colno})") from None
    if value == "" and _is_optional(annotation):
        return None
    return value


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node: Any = data
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        where = ".".join(path[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit():
                raise ConfigError(f"{where}: {'.'.join(path[:depth])} is a list; use an index such as .0")
            index = int(part)
            if index >= len(node):
                raise ConfigError(f"{where}: no such item ({len(node)} configured)")
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {'.'.join(path[:depth])} is not a section")
        if last:
            node[part] = value
        else:
            if not isinstance(node.get(part), (dict, list)):
                is_list = get_origin(_unwrap(_annotation_at(path[: depth + 1]))) is list
                node[part] = [] if is_list else {}
            node = node[part]


def _env_layer(env: Mapping[str, str]) -> list[tuple[tuple[str, ...], str, str]]:
    """(path, value, variable name) for each STYLECAST_* variable that addresses a settings section."""
    layer = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if path[0] not in Settings.model_fields:
            continue  # STYLECAST_CONFIG, STYLECAST_RUN_ID, …: not settings
        if any(not part for part in path):
            raise ConfigError(f"{name}: empty part in variable name (use single '__' between field names)")
        layer.append((path, env[name], name))
    return layer


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load settings: defaults < YAML file `path` < `env` (STYLECAST_*) < `overrides` (dotted keys).

    `env` defaults to `os.environ`; pass `{}` to ignore the environment. Without `path`,
    `$STYLECAST_CONFIG` names the file, if set. Raises `ConfigError`.
    """
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_PATH_ENV):
        path = env[CONFIG_PATH_ENV]
    data: dict[str, Any] = _read_yaml(Path(path).expanduser()) if path is not None else {}
    provenance: dict[tuple[str, ...], str] = {}

    for key_path, value, name in _env_layer(env):
        _set_path(data, key_path, _coerce_text(key_path, value, name))
        provenance[key_path] = name
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", key):
            raise ConfigError(f"override key {key!r} is not a dotted field path such as 'engine.batch'")
        key_path = tuple(key.lower().split("."))
        _set_path(data, key_path, _coerce_text(key_path, value, f"override {key}"))
        provenance[key_path] = f"override {key}"

    service = data.get("service")
    if service is None or (isinstance(service, dict) and "runtime_dir" not in service):
        data.setdefault("service", {})
        if isinstance(data["service"], dict):
            data["service"]["runtime_dir"] = str(default_runtime_dir(env))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, provenance) from None


# --------------------------------------------------------------------------------------------------
# Handing settings around
# --------------------------------------------------------------------------------------------------


def settings_to_json(settings: Settings, *, reveal_secrets: bool = False) -> str:
    """JSON of the settings; redacted unless `reveal_secrets` (only for a child process's stdin/env)."""
    return settings.model_dump_json(context={"reveal_secrets": reveal_secrets})


def settings_from_json(text: str | bytes) -> Settings:
    """Inverse of `settings_to_json(..., reveal_secrets=True)`; raises `ConfigError`."""
    try:
        return Settings.model_validate_json(text)
    except ValidationError as exc:
        raise format_validation_error(exc) from None


def env_var_name(path: tuple[str, ...]) -> str:
    """Environment variable for a field path: ('engine', 'batch') → STYLECAST_ENGINE__BATCH."""
    return ENV_PREFIX + "__".join(p.upper() for p in path)


def _type_text(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_text(args[0])
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        kinds = [_type_text(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_text(args[0])}"
    names = {SecretStr: "secret string", SecretUrl: "path or URL (credentials hidden)", Path: "path", bool: "boolean"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return "(computed)" if field.default_factory is default_runtime_dir else "(empty)"
    return "null" if field.default is None else f"`{field.default!r}`"


def settings_reference() -> str:
    """Markdown reference of every field: key, environment variable, type, default, description."""
    out = ["# StyleCast configuration reference", "", "Precedence: defaults < YAML file < STYLECAST_* environment < CLI overrides.", ""]

    def table(title: str, model: type[BaseModel], key_prefix: str, env_path: tuple[str, ...]) -> None:
        out.extend([f"## {title}", "", "| key | environment | type | default | description |", "|---|---|---|---|---|"])
        for name, field in model.model_fields.items():
            env = env_var_name((*env_path, name))
            row = [f"`{key_prefix}{name}`", f"`{env}`", _type_text(field.annotation), _default_text(field), field.description or ""]
            out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        out.append("")

    for section in ("model", "engine", "ingest", "service", "sharding"):
        field = Settings.model_fields[section]
        table(f"`{section}`: {field.description}", _unwrap(field.annotation), f"{section}.", (section,))
    table("`streams[]`: one stream each", StreamSettings, "streams.N.", ("streams", "N"))
    table("`streams[].sinks[]`: one output each", SinkSettings, "streams.N.sinks.M.", ("streams", "N", "sinks", "M"))
    return "\n".join(out) + "\n"
