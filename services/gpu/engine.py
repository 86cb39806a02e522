"""StreamEngine: batched edit of video frames with side/main CUDA-stream pipelining (paper §III, Alg. 1).

Per batch n:
  side stream  (side thread): upload frames, VAE-encode, text-encode (frame at 256² + instruction);
  main stream  (main thread): rebuild the LLLite conditioning on refresh batches, K U-Net steps, decode.
Batch n+1's side work overlaps batch n's main work; one CUDA event joins them. With `cuda_streams=3`
(opt-in) the refresh flows run on the side stream and the decode + download on a third stream, joined to
the main stream by events (the U-Net's end; the decoded frame a later refresh warps). The side path never
syncs the host (the stock encoder's rotary `.item()` is gone: positions are precomputed), and each
path is a few CUDA-graph replays, so two Python threads can feed the GPU without fighting over the GIL.
A third thread waits for finished batches and hands results back.

Without CUDA the same stage functions run one after the other in the caller's thread.

Usage (in-process, no ZeroMQ):
    engine = StreamEngine(EngineConfig(size=512, batch=8), bundle)
    engine.open_stream("cam0", prompt="make it an oil painting")
    out = engine.submit(frames_uint8_BxSxSx3, stream="cam0").result().frames
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .conditioning import DeviceFlow, FlowPool, warp_on_device
from .cross_attention import CROSS_ATTENTIONS, CrossAttentionError, restore_cross_attention, use_key_channel_cross_attention
from .denoise import EditDenoiser
from .depthwise import DEPTHWISE, restore_depthwise, use_tap_depthwise
from .farneback import backward_flows, warm_constants
from .fp8 import FP8_PARTS, fp8_problem, restore_linears, use_fp8
from .graphs import CapturedCall
from .group_norm import GROUP_NORMS, resolve_group_norm, restore_group_norms, use_two_pass_group_norm
from .lllite import TemporalLLLite
from .profiles import ModelBundle
from .prompt_encoder import EditPromptEncoder
from .refresh_policy import RefreshPolicy, refresh_size
from .streams import StreamState, frame_noise
from .token_shapes import TOKEN_SHAPES, UNET_TOKEN_BUCKETS, TokenGraphLru, TokenShapes

log = logging.getLogger(__name__)

TE_MODES = ("per_frame", "batch_one", "refresh_every")
FLOW_BACKENDS = ("auto", "opencv", "torch")
COMPILE_MODES = ("none", "default", "max-autotune-no-cudagraphs")
COMPILE_PARTS = ("unet", "text_encoder", "vae")
TOKEN_STAGES = ("text_encode", "denoise")  # stages whose graph keys are (stage, bucket, tokens)
COMPILE_BUCKETS = ("all", "largest")
COMPILE_REFRESH = ("batch", "every_size")
CHANNELS_LAST_PARTS = ("unet", "vae")
AUTOTUNE_PARTS = ("unet", "text_encoder")
# Inductor times Triton matrix-product templates (with the following elementwise work fused into their epilogue)
# against ATen's cuBLAS call for each shape and keeps the quicker: the same products, other kernels. Convolutions
# stay with cuDNN (Triton's convolution templates won 0-3% on TAESD's, NOTES 54, for minutes of tuning).
AUTOTUNE_OPTIONS = {"max_autotune_gemm": True, "max_autotune_conv_backends": "ATEN"}


def allow_recompiles(shapes: int) -> None:
    """Every batch bucket × token bucket is its own static-shape compile; dynamo's default limit (8 per
    function) would silently fall back to eager past that, so raise it to what the engine can ask for."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), shapes))


def release_compile_workers() -> None:
    """Inductor keeps a pool of compile processes for the life of the process. Once every shape is compiled
    they only hold memory, and tearing them down at interpreter exit can hang (seen on the H100: a worker
    that never exited). Shut them down now; a later compile starts a new pool."""
    from torch._inductor.async_compile import shutdown_compile_workers

    shutdown_compile_workers()


def resolve_flow_backend(backend: str, cuda: bool) -> str:
    """Where refresh flows are computed: "auto" means on the engine's device with CUDA (no host cores, no
    wait), with OpenCV on the CPU (far quicker there than the same function in torch)."""
    return backend if backend != "auto" else ("torch" if cuda else "opencv")


class ByBatchSize(torch.nn.Module):
    """`compiled` for batches of the sizes in `sizes` (the leading dimension of argument `size_arg`), `eager` for
    the others: with `compile_buckets` "largest" only the full batch pays the compile at start-up. A module,
    because it may replace one (the denoiser's `unet_fn`)."""

    def __init__(self, compiled, eager, sizes: set[int], size_arg: int = 0):
        super().__init__()
        self.compiled, self.eager, self.sizes, self.size_arg = compiled, eager, sizes, size_arg

    def forward(self, *args, **kwargs):
        return (self.compiled if args[self.size_arg].shape[0] in self.sizes else self.eager)(*args, **kwargs)


def unit_pixels(frames_u8: torch.Tensor) -> torch.Tensor:
    """uint8 frames (B, S, S, 3), as the engine receives them → float (B, 3, S, S) in [0, 1], as both encoders take them."""
    return frames_u8.permute(0, 3, 1, 2).float() / 255.0


def refresh_compiled(fn, batch: int, every_size: bool, size_arg: int = 0, **compile_options) -> ByBatchSize:
    """A refresh function (flows or conditioning) for every refresh size: compiled for the full batch, and for a
    stream's smaller share either eager inside its CUDA graph (one compile at start-up) or, with `every_size`,
    compiled once more with automatic dynamic shapes: the first smaller size compiles for itself, the next
    recompiles with a symbolic batch dimension that every later size reuses. On an H100 at 512² that took 56 + 77 s
    and brings 8 rows from 18.4 to 11.9 ms (benchmarks/NOTES.md 51). `compile_options` go to torch.compile."""
    full = torch.compile(fn, dynamic=False, fullgraph=True, **compile_options)
    if not every_size:
        return ByBatchSize(full, fn, {batch}, size_arg)

    def smaller_share(*args):  # a code object of its own, so the dynamic graph never serves the full batch
        return fn(*args)

    return ByBatchSize(full, torch.compile(smaller_share, dynamic=None, fullgraph=True, **compile_options), {batch}, size_arg)


class EngineError(ValueError):
    """A request the engine cannot serve (bad frames, unknown stream, bad setting); says which."""


@dataclass
class EngineConfig:
    size: int = 512  # S: frames are S×S
    batch: int = 8  # B: largest batch; smaller batches pad up to the next bucket
    steps: int = 1  # K flow-matching steps
    hooks: str = "down_blocks"  # LLLite hook subset: none / down_blocks / mid_block / up_blocks / all
    adapter_weights: str | None = None  # kohya-style safetensors; None = zero-initialised adapter
    multiplier: float = 1.0
    cond_refresh: int = 8  # rebuild the adapter conditioning every N batches of a stream
    refresh_on_scene_cut: bool = False  # also refresh at a cut in the inputs and the batch after (refresh_policy)
    refresh_on_motion: bool = False  # also refresh early once the inputs drift past the threshold below
    refresh_motion_threshold: float = 20.0  # mean |Δ| of 32×32 gray thumbnails since the last refresh, 0-255
    te_mode: str = "per_frame"  # per_frame (exact) / batch_one / refresh_every (approximations, opt-in)
    te_refresh: int = 4  # N for te_mode=refresh_every
    encoder_size: int = 256  # the frame goes to the text encoder at this size
    compile: str = "default"  # torch.compile mode on CUDA; "none" for eager
    compile_parts: tuple[str, ...] = COMPILE_PARTS  # what `compile` covers: fewer parts start faster, run slower
    autotune: tuple[str, ...] = ()  # compiled parts whose matrix products are autotuned (AUTOTUNE_OPTIONS): minutes more start-up
    compile_buckets: str = "all"  # all: every batch bucket compiled; largest: only `batch` (smaller ones run uncompiled)
    compile_refresh: str = "batch"  # refresh shares below `batch`: eager in their graphs, or every_size (one more compile)
    token_shapes: str = "dynamic"  # the compiled parts' token axis: one compile for every prompt length, or one per bucket
    token_graphs: int = 32  # prompt lengths whose CUDA graphs each token-shaped stage keeps (least recently used go)
    channels_last: tuple[str, ...] = ("vae",)  # whose convolutions run NHWC on CUDA (a layout change: same arithmetic)
    cuda_graphs: bool = True  # capture each stage per batch bucket (CUDA only)
    buckets: tuple[int, ...] = ()  # batch sizes to serve; default (batch,)
    pipeline_depth: int = 3  # batches queued ahead of the side stage
    flow_workers: int = 8
    flow_backend: str = "auto"  # opencv: host threads (or the flow process); torch: on the engine's device; auto: torch on CUDA
    flow_timeout_s: float = 10.0  # a refresh whose flow takes longer keeps the previous conditioning
    # 2: side (upload, VAE encode, text encoder) + main (refresh, U-Net, decode): the paper's layout. 3 (opt-in;
    # +0.5% on an H100 at B=8, where the GPU is already full): the refresh flows join the side stream and decode +
    # download get a stream of their own, so the U-Net's stream carries only the U-Net and the refresh's conditioning.
    cuda_streams: int = 2
    fp8: tuple[str, ...] = ()  # parts (text_encoder, unet) whose large linears run in FP8: an approximation, opt-in
    # The text encoder's language model: q, k, v in one product (the same function). Off: with depthwise taps it
    # went with a 9% slower engine on an H100 at B=16, and alone it is untimed in a process of its own (NOTES 64).
    fused_qkv: bool = False
    # The U-Net's GroupNorms. native: torch's; two_pass: the same statistics as per-channel sums (group_norm.py)
    # where inductor traces the U-Net (it reduces them near memory speed), torch's kernel in uncompiled calls;
    # auto: two_pass when the U-Net is compiled. Same function either way.
    group_norm: str = "auto"
    # The U-Net's 3×3 depthwise convolutions where inductor traces it: cudnn, or taps (nine shifted multiply-adds in
    # a kernel inductor generates, depthwise.py; the same sums, frames bit-identical on an H100). Off: with fused_qkv
    # the engine ran 9% slower on an H100 at B=16 (NOTES 64).
    depthwise: str = "cudnn"
    # The U-Net's cross-attention mask. bias: diffusers' additive bias, which SDPA expands per query (and inductor
    # appears to write out); key_channel: the same logits with the bias in an extra query/key channel (cross_attention.py);
    # key_channel_fused_kv: that, with every cross-attention's keys and values from one matrix product.
    cross_attention: str = "bias"
    keep_latents: bool = False  # return final latents too (tests)

    def validate(self) -> None:
        if self.size % 64 or not 64 <= self.size <= 1024:
            raise EngineError(f"size {self.size} unsupported: use a multiple of 64 between 64 and 1024")
        if not 1 <= self.batch <= 64:
            raise EngineError(f"batch {self.batch} out of range 1..64")
        if not 1 <= self.steps <= 8:
            raise EngineError(f"steps {self.steps} out of range 1..8")
        if self.flow_backend not in FLOW_BACKENDS:
            raise EngineError(f"flow_backend {self.flow_backend!r}; use one of {FLOW_BACKENDS}")
        if self.cuda_streams not in (2, 3):
            raise EngineError(f"cuda_streams {self.cuda_streams}; use 2 or 3")
        if self.te_mode not in TE_MODES:
            raise EngineError(f"te_mode {self.te_mode!r}; use one of {TE_MODES}")
        if self.compile not in COMPILE_MODES:
            raise EngineError(f"compile {self.compile!r}; use one of {COMPILE_MODES}")
        if unknown := set(self.fp8) - set(FP8_PARTS):
            raise EngineError(f"fp8 {sorted(unknown)} unknown; use some of {FP8_PARTS}")
        if self.fused_qkv and "text_encoder" in self.fp8:
            raise EngineError("fused_qkv stacks the text encoder's bf16 q/k/v weights; fp8 text_encoder replaces them: choose one")
        if self.group_norm not in GROUP_NORMS:
            raise EngineError(f"group_norm {self.group_norm!r}; use one of {GROUP_NORMS}")
        if self.depthwise not in DEPTHWISE:
            raise EngineError(f"depthwise {self.depthwise!r}; use one of {DEPTHWISE}")
        if self.cross_attention not in CROSS_ATTENTIONS:
            raise EngineError(f"cross_attention {self.cross_attention!r}; use one of {CROSS_ATTENTIONS}")
        if self.compile_buckets not in COMPILE_BUCKETS:
            raise EngineError(f"compile_buckets {self.compile_buckets!r}; use 'all' or 'largest'")
        if self.token_shapes not in TOKEN_SHAPES:
            raise EngineError(f"token_shapes {self.token_shapes!r}; use one of {TOKEN_SHAPES}")
        if self.token_graphs < 1:
            raise EngineError(f"token_graphs {self.token_graphs} must be ≥ 1")
        if self.compile_refresh not in COMPILE_REFRESH:
            raise EngineError(f"compile_refresh {self.compile_refresh!r}; use one of {COMPILE_REFRESH}")
        if unknown := set(self.compile_parts) - set(COMPILE_PARTS):
            raise EngineError(f"compile_parts {sorted(unknown)} unknown; use some of {COMPILE_PARTS}")
        if unknown := set(self.autotune) - set(AUTOTUNE_PARTS):
            raise EngineError(f"autotune {sorted(unknown)} unknown; use some of {AUTOTUNE_PARTS}")
        if self.autotune and self.compile != "default":
            raise EngineError(f"autotune {list(self.autotune)} needs compile 'default' (not {self.compile!r}): it tunes what that mode compiles")
        if uncompiled := set(self.autotune) - set(self.compile_parts):
            raise EngineError(f"autotune {sorted(uncompiled)} not in compile_parts {list(self.compile_parts)}: only compiled parts are tuned")
        if unknown := set(self.channels_last) - set(CHANNELS_LAST_PARTS):
            raise EngineError(f"channels_last {sorted(unknown)} unknown; use some of {CHANNELS_LAST_PARTS}")
        if self.cond_refresh < 1 or self.te_refresh < 1:
            raise EngineError("cond_refresh and te_refresh must be ≥ 1")
        if self.refresh_on_motion and self.refresh_motion_threshold <= 0:
            raise EngineError(f"refresh_motion_threshold {self.refresh_motion_threshold} must be > 0 (gray levels)")
        if any(b < 1 or b > self.batch for b in self.buckets):
            raise EngineError(f"buckets {self.buckets} must lie in 1..batch ({self.batch})")


@dataclass
class BatchOutput:
    frames: np.ndarray  # (b, S, S, 3) uint8
    streams: list[str]
    indices: list[int]  # per-stream frame index of each row
    prompts: list[str]  # the instruction each row was encoded with
    timings: dict = field(default_factory=dict)  # ms: side, main, components, latency
    latents: torch.Tensor | None = None
    bucket: int = 0  # the batch shape it ran at (rows beyond the frames were padding)


@dataclass
class _Job:
    rows: list[tuple[StreamState, int]]  # (stream, frame index) per row, grouped by stream
    frames: np.ndarray
    segments: list[tuple[StreamState, int, int, bool, object]]  # stream, first row, end row, refresh, flow future
    prompts: dict[str, str]  # each stream's prompt when the batch was submitted
    bucket: int
    future: Future
    t_submit: float
    side: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


class StreamEngine:
    def __init__(self, config: EngineConfig, bundle: ModelBundle, flow_provider=None):
        """`flow_provider.submit(previous, currents, refs=None) -> Future[(b, S, S, 2) float32]` computes the
        backward flows of a refresh batch; by default a thread pool here, in the service the flow process."""
        config.validate()
        self.config = config
        self.bundle = bundle
        self.device = bundle.device
        self.dtype = bundle.dtype
        self.cuda = self.device.type == "cuda"
        self.buckets = tuple(sorted(set(config.buckets or (config.batch,)) | {config.batch}))
        self.latent = config.size // 8
        self.encoder = EditPromptEncoder(bundle.text_encoder, bundle.tokenizer, bundle.vision, config.encoder_size)
        if config.fused_qkv:  # weights become views of one stack: nothing to give back on close
            log.info("text encoder q/k/v stacked in %d layers", self.encoder.fuse_qkv())
        # First of the in-place changes to the bundle's U-Net (each given back on close): it is the one that can refuse.
        try:
            self.cross_attentions = (use_key_channel_cross_attention(bundle.unet, config.cross_attention == "key_channel_fused_kv")
                                     if config.cross_attention != "bias" else 0)
        except CrossAttentionError as exc:
            raise EngineError(str(exc)) from exc
        log.info("U-Net cross-attention mask: %s (%d layers)", config.cross_attention, self.cross_attentions)
        self.adapter = None
        if config.hooks != "none":
            self.adapter = TemporalLLLite(bundle.unet, config.hooks).to(self.device, self.dtype)
            if config.adapter_weights:
                self.adapter.load(config.adapter_weights)
            self.adapter.allocate(config.batch, self.latent, self.latent)
            self.adapter.attach("inference")
        # In place on the bundle's U-Net, restored on close (the naive pipeline in the same process uses it too).
        self.group_norm = resolve_group_norm(config.group_norm, self.compiled and "unet" in config.compile_parts)
        self.group_norms = use_two_pass_group_norm(bundle.unet) if self.group_norm == "two_pass" else 0
        log.info("U-Net GroupNorms: %s (%d swapped)", self.group_norm, self.group_norms)
        self.depthwise_convs = use_tap_depthwise(bundle.unet) if config.depthwise == "taps" else 0
        self.tokens = TokenShapes(config.token_shapes)
        self.denoiser = EditDenoiser(bundle.unet, bundle.vae, bundle.scheduler, config.steps, config.size, self.tokens.mark)
        self._encoder_fn = self.encoder
        self._vae_encode, self._decode = self._vae_encode_fn, self.denoiser.decode
        self._flow_fn = backward_flows
        self._cond_fn = self._conditioning
        # The same function either way (farneback.py matches OpenCV to float rounding); on the GPU it needs no host
        # cores and no wait, on the CPU OpenCV's is far quicker.
        self.flow_backend = resolve_flow_backend(config.flow_backend, self.cuda)
        self._flows_on_side = config.cuda_streams == 3 and self.flow_backend == "torch"
        # The text encoder's module holds both towers (vision and language).
        self._fp8_modules = [bundle.text_encoder if part == "text_encoder" else bundle.unet for part in config.fp8]
        self.fp8_layers = 0
        if self._fp8_modules:
            if problem := fp8_problem(self.device):
                raise EngineError(problem)
            # In place on the bundle's modules (restored on close): an approximation, so never without being asked.
            self.fp8_layers = sum(len(use_fp8(module)) for module in self._fp8_modules)
            log.info("FP8 linears in %s: %d layers", ", ".join(config.fp8), self.fp8_layers)
        for part in config.channels_last if self.cuda else ():
            # TAESD runs 64-channel convolutions at full resolution, where cuDNN's NCHW bf16 kernels transpose
            # every activation. The uint8 frames arrive NHWC, so the input permute is free, and so is the
            # decoder's permute back. Weights change layout, not value; the bundle's modules are shared, so
            # the naive pipeline in the same process sees it too.
            getattr(bundle, part).to(memory_format=torch.channels_last)
        if self.compiled:
            compiled_buckets = set(self.buckets) if config.compile_buckets == "all" else {config.batch}
            allow_recompiles(len(compiled_buckets) * len(UNET_TOKEN_BUCKETS) * 2)
            parts = set(config.compile_parts)

            def compiled(fn, fullgraph: bool, part: str):
                how = {"options": AUTOTUNE_OPTIONS} if part in config.autotune else {"mode": config.compile}
                traced = torch.compile(fn, dynamic=False, fullgraph=fullgraph, **how)
                return traced if compiled_buckets == set(self.buckets) else ByBatchSize(traced, fn, compiled_buckets)

            if "unet" in parts:
                self.denoiser.unet_fn = compiled(bundle.unet, fullgraph=False, part="unet")
            if "text_encoder" in parts:
                # Both towers: fused norms, rotary and residuals, 1.8× on an H100 alone; the once-per-device
                # constants are built first so the traced function only reads them.
                self.encoder.prepare(self.device, self.dtype)
                self._encoder_fn = compiled(self.encoder.forward, fullgraph=True, part="text_encoder")
            if "vae" in parts:
                # With the scaling, clamping and uint8 packing around it fused into the convolutions' epilogues.
                self._vae_encode = compiled(self._vae_encode_fn, fullgraph=True, part="vae")
                self._decode = compiled(self.denoiser.decode, fullgraph=True, part="vae")
            # Refreshes run at the sizes of refresh_sizes(batch) (see refresh_compiled).
            every_size = config.compile_refresh == "every_size"
            if self.flow_backend == "torch":
                warm_constants(self.device)
                # ≈ 600 small kernels eager (48 ms for 16 frames at 512² on an H100, more beside the side stage).
                self._flow_fn = refresh_compiled(backward_flows, config.batch, every_size, mode=config.compile)
            if self.adapter is not None:
                # Warp and the hooks' small conditioning networks: ≈ 100 kernels eager per refresh, a handful fused.
                self._cond_fn = refresh_compiled(self._conditioning, config.batch, every_size, size_arg=1, mode=config.compile)
        self.streams: dict[str, StreamState] = {}
        self.refresh_policy = RefreshPolicy.from_config(config)
        # Host flows come from the caller's provider (the service's flow process) or a thread pool of our own.
        self._own_flows = flow_provider is None and self.flow_backend == "opencv"
        self.flows = FlowPool(config.flow_workers) if self._own_flows else flow_provider
        self._graphs: dict[tuple, CapturedCall] = {}
        self._token_graphs = TokenGraphLru(config.token_graphs)  # keys (stage, bucket, tokens) of TOKEN_STAGES
        self._pools: dict[str, object] = {}
        self._adapter_rows: tuple | None = None
        self._prev_main_end = None  # the previous batch's last main-stage mark: where the gap to the next is counted from
        self.out_stream = None  # decode + download (cuda_streams 3)
        self._lock = threading.Lock()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self.counters = {"batches": 0, "frames": 0, "refreshes": 0, "refresh_failures": 0, "te_rows": 0, "te_cache_hits": 0}
        if self.cuda:
            self.side_stream = torch.cuda.Stream(self.device)
            self.main_stream = torch.cuda.Stream(self.device)
            self.out_stream = torch.cuda.Stream(self.device) if config.cuda_streams == 3 else None
            self._side_q: queue.Queue = queue.Queue(maxsize=config.pipeline_depth)
            self._main_q: queue.Queue = queue.Queue(maxsize=2)
            self._done_q: queue.Queue = queue.Queue(maxsize=4)

    @property
    def compiled(self) -> bool:
        """Whether torch.compile is in use: CUDA, a compile mode and at least one part to compile."""
        return self.cuda and self.config.compile != "none" and bool(self.config.compile_parts)

    # ---- streams -------------------------------------------------------------------------------------

    def open_stream(self, name: str, prompt: str, seed: int = 0, multiplier: float | None = None) -> StreamState:
        if name in self.streams:
            raise EngineError(f"stream {name!r} is already open")
        self.encoder.layout(prompt)  # fail now on a prompt the encoder cannot take
        state = StreamState(name, prompt, seed, self.config.multiplier if multiplier is None else multiplier)
        self.streams[name] = state
        return state

    def set_prompt(self, name: str, prompt: str) -> None:
        """Applied from the next batch submitted for the stream (a batch boundary)."""
        self.encoder.layout(prompt)
        self._stream(name).prompt = prompt

    def close_stream(self, name: str) -> None:
        self.streams.pop(name, None)

    def _stream(self, name: str) -> StreamState:
        if name not in self.streams:
            raise EngineError(f"unknown stream {name!r}; open it first")
        return self.streams[name]

    # ---- submission ----------------------------------------------------------------------------------

    def submit(self, frames: np.ndarray, stream: str = "default") -> Future:
        """Queue (b, S, S, 3) uint8 frames of one stream; returns a Future of BatchOutput."""
        return self.submit_mixed([(stream, frames)])

    def submit_mixed(self, parts: list[tuple[str, np.ndarray]], refs: dict | None = None) -> Future:
        """Queue one batch made of consecutive frames of several streams (each stream's rows stay in order).

        `refs[stream]` is handed to the flow provider with that stream's frames (ring slots in the service).
        """
        if self._closed:
            raise EngineError("engine is closed")
        cfg = self.config
        parts = [(name, self._check_frames(frames)) for name, frames in parts]
        total = sum(len(f) for _, f in parts)
        if total < 1 or total > cfg.batch:
            raise EngineError(f"a batch holds 1..{cfg.batch} frames, got {total}")
        names = [name for name, _ in parts]
        if len(set(names)) != len(names):
            raise EngineError("a batch may hold each stream once (merge its frames into one part)")
        rows, segments, arrays = [], [], []
        with self._lock:  # stream counters must advance in submission order
            for name, frames in parts:
                st = self._stream(name)
                start = len(rows)
                rows += [(st, st.next_index + i) for i in range(len(frames))]
                refresh = self.adapter is not None and self.refresh_policy.decide(st, frames) is not None
                flow = None
                if refresh and self.flow_backend == "torch":
                    flow = DeviceFlow(st.last_input)  # computed on the main stream from the uploaded frames
                elif refresh:
                    flow = self.flows.submit(st.last_input, frames, refs=(refs or {}).get(name))
                segments.append((st, start, len(rows), refresh, flow))
                st.next_index += len(frames)
                st.batches += 1
                st.last_input = frames[-1].copy()
                arrays.append(frames)
            bucket = next(b for b in self.buckets if b >= total)
            prompts = {name: self.streams[name].prompt for name in names}
            job = _Job(rows, np.concatenate(arrays), segments, prompts, bucket, Future(), time.perf_counter())
            job.timings["t_submit"] = time.monotonic()
        if not self.cuda:
            self._run_inline(job)
        else:
            self._ensure_threads()
            self._side_q.put(job)
        return job.future

    def process(self, frames: np.ndarray, stream: str = "default") -> np.ndarray:
        """Blocking convenience: styled frames of one batch."""
        return self.submit(frames, stream).result().frames

    def _check_frames(self, frames) -> np.ndarray:
        s = self.config.size
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
            raise EngineError(f"frames must be a uint8 numpy array, got {type(frames).__name__} {getattr(frames, 'dtype', '')}")
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[1:] != (s, s, 3):
            raise EngineError(f"frames must be (b, {s}, {s}, 3) RGB, got shape {frames.shape}")
        return np.ascontiguousarray(frames)

    # ---- stages ----------------------------------------------------------------------------------------

    def _side(self, job: _Job) -> None:
        """Upload, VAE-encode and text-encode one batch (on the side stream when CUDA is used)."""
        b, bucket = len(job.rows), job.bucket
        t0 = time.perf_counter()
        host = torch.from_numpy(job.frames)
        if bucket > b:  # pad to the bucket with copies of the last frame; the extra rows are dropped
            host = torch.cat([host, host[-1:].expand(bucket - b, -1, -1, -1)])
        frames = host.to(self.device, non_blocking=True) if self.cuda else host
        noise = torch.empty((bucket, 4, self.latent, self.latent), dtype=torch.float32)
        for st, start, end, _, _ in job.segments:
            frame_noise(st.seed, [i for _, i in job.rows[start:end]], (4, self.latent, self.latent), out=noise[start:end])
        noise[b:] = noise[b - 1 : b]
        noise = noise.to(self.device, non_blocking=True).to(self.dtype)
        events = self._mark("side_start")
        source = self._call(("vae_encode", bucket), self._vae_encode, frames)
        events += self._mark("after_vae")
        embeds, mask = self._text_encode(job, frames)
        # cuda_streams 3: a refresh's flows need only this batch's inputs, so they leave the U-Net's stream.
        flows = {start: self._device_flows(frames[start:end], flow.previous, family="side")
                 for _, start, end, refresh, flow in job.segments
                 if self._flows_on_side and refresh and isinstance(flow, DeviceFlow)}
        events += self._mark("side_end")
        job.side = {"source": source, "embeds": embeds, "mask": mask, "noise": noise, "events": events, "frames": frames,
                    "flows": flows}
        job.timings["side_host_ms"] = (time.perf_counter() - t0) * 1e3

    def _vae_encode_fn(self, frames_u8: torch.Tensor) -> torch.Tensor:
        return self.denoiser.encode(unit_pixels(frames_u8))

    def _te_fn(self, frames_u8, ids, cos, sin, lengths):
        self.tokens.mark(ids, cos, sin)
        return self._encoder_fn(unit_pixels(frames_u8), ids, cos, sin, lengths)

    def _encode(self, frames: torch.Tensor, prompts: list[str], bucket: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, pos, lengths = self.encoder.pack([self.encoder.layout(p) for p in prompts], bucket=self.tokens.encoder_bucket)
        cos, sin = self.encoder.rope_tables(pos.to(self.device), self.dtype)
        self.counters["te_rows"] += len(prompts)
        return self._call(("text_encode", bucket, ids.shape[1]), self._te_fn, frames, ids.to(self.device), cos, sin,
                          lengths.to(self.device))

    def _text_encode(self, job: _Job, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame encoding (exact, default), or the opt-in representative-frame modes."""
        cfg, bucket, b = self.config, job.bucket, len(job.rows)
        if cfg.te_mode == "per_frame":
            prompts = [job.prompts[st.name] for st, _ in job.rows]
            return self._pad_tokens(*self._encode(frames, prompts + [prompts[-1]] * (bucket - b), bucket))
        # Approximate modes: one representative frame (the stream's first in the batch) per stream that
        # needs encoding, broadcast to the stream's rows; `refresh_every` also reuses it across batches.
        due = [seg for seg in job.segments if seg[0].te_due(cfg.te_mode, cfg.te_refresh, job.prompts[seg[0].name])]
        if due:
            te_bucket = min(1 << (len(due) - 1).bit_length(), cfg.batch)
            pick = [start for _, start, _, _, _ in due]
            pick += [pick[-1]] * (te_bucket - len(pick))
            prompts = [job.prompts[job.rows[r][0].name] for r in pick]
            embeds, mask = self._encode(frames[torch.tensor(pick, device=frames.device)], prompts, te_bucket)
            for k, (st, *_rest) in enumerate(due):
                st.te_cache = (embeds[k : k + 1], mask[k : k + 1])
                st.te_cache_prompt, st.te_age = job.prompts[st.name], 0
        parts_e, parts_m = [], []
        for st, start, end, _, _ in job.segments:
            if all(st is not seg[0] for seg in due):
                self.counters["te_cache_hits"] += 1
            st.te_age += 1
            parts_e.append(st.te_cache[0].expand(end - start, -1, -1))
            parts_m.append(st.te_cache[1].expand(end - start, -1))
        length = max(e.shape[1] for e in parts_e)
        embeds = torch.cat([F.pad(e, (0, 0, 0, length - e.shape[1])) for e in parts_e])
        mask = torch.cat([F.pad(m, (0, length - m.shape[1])) for m in parts_m])
        embeds = torch.cat([embeds, embeds[-1:].expand(bucket - b, -1, -1)])
        mask = torch.cat([mask, mask[-1:].expand(bucket - b, -1)])
        return self._pad_tokens(embeds, mask)

    def _pad_tokens(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad the token axis to the U-Net's length for it (zeros, mask 0: the same output)."""
        length = embeds.shape[1]
        target = self.tokens.unet_length(length)
        if target == length:
            return embeds, mask
        return F.pad(embeds, (0, 0, 0, target - length)), F.pad(mask, (0, target - length))

    def _refresh(self, st: StreamState, start: int, end: int, flow_future, frames: torch.Tensor,
                 flows: torch.Tensor | None = None) -> None:
        """Warp the stream's previous output onto each new input and rebuild its adapter embedding.

        A refresh whose flow failed (e.g. a live source overwrote the frames) keeps the previous
        conditioning; it is logged and counted, never silent. `flows`: already computed by the side stage
        (cuda_streams 3), padded to the largest batch.
        """
        b = end - start
        if flows is None and isinstance(flow_future, DeviceFlow):
            flows = self._device_flows(frames[start:end], flow_future.previous)
        elif flows is None:
            try:
                flows = flow_future.result(timeout=self.config.flow_timeout_s)
            except Exception as exc:
                log.warning("stream %s: conditioning refresh skipped, flow failed: %s", st.name, exc)
                self.counters["refresh_failures"] += 1
                return
            flows = self._pad_rows(torch.from_numpy(flows).to(self.device, non_blocking=True), refresh_size(b, self.config.batch))
        if st.last_output_ready is not None:  # decoded on the output stream (cuda_streams 3)
            torch.cuda.current_stream().wait_event(st.last_output_ready)
        embeddings = self._call(("refresh_cond", len(flows)), self._cond_fn, st.last_output, flows)
        st.cond = {key: value[:b] for key, value in zip(self.adapter.modules_dict, embeddings)}
        st.cond_version += 1
        st.refreshes += 1
        self.counters["refreshes"] += 1

    def _device_flows(self, currents: torch.Tensor, previous: np.ndarray, family: str | None = None) -> torch.Tensor:
        """Backward flows of (b, S, S, 3) device frames into `previous`, on the current stream (main; side with
        cuda_streams 3), padded to `refresh_size(b)` rows (rows past b repeat the last): a few captured shapes serve
        every stream's share of a batch."""
        prev = torch.from_numpy(previous).to(self.device, non_blocking=True)
        size = refresh_size(currents.shape[0], self.config.batch)
        return self._call(("flow", size), self._flow_fn, self._pad_rows(currents, size), prev, family=family)

    @staticmethod
    def _pad_rows(rows: torch.Tensor, size: int) -> torch.Tensor:
        """Repeat the last row up to `size` rows, a shape the refresh graphs are captured at."""
        missing = size - rows.shape[0]
        return torch.cat([rows, rows[-1:].expand(missing, *rows.shape[1:])]) if missing > 0 else rows

    def _conditioning(self, previous_output: torch.Tensor, flows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The previous output warped onto each new input, through every hook's conditioning network: one
        embedding per hook (the adapter's module order) for each row."""
        return tuple(self.adapter.compute_embeddings(warp_on_device(previous_output, flows).to(self.dtype)).values())

    def _write_adapter_rows(self, job: _Job) -> None:
        """Copy each stream's cached embedding into its batch rows, only when the layout changed."""
        signature = tuple((id(st), st.cond_version, s, e) for st, s, e, _, _ in job.segments)
        if signature == self._adapter_rows:
            return
        self.adapter.set_multiplier(slice(0, self.config.batch), 0.0)
        for st, start, end, _, _ in job.segments:
            if st.cond is None:
                continue  # no previous output yet: the adapter stays off for these rows
            n = end - start
            rows = {k: v[torch.clamp(torch.arange(n, device=v.device), max=v.shape[0] - 1)] for k, v in st.cond.items()}
            self.adapter.write_embeddings(slice(start, end), rows)
            self.adapter.set_multiplier(slice(start, end), st.multiplier)
        self._adapter_rows = signature

    def _main(self, job: _Job) -> None:
        side = job.side
        events = self._mark("main_start")
        if self.adapter is not None:
            for st, start, end, refresh, flow in job.segments:
                if refresh:
                    self._refresh(st, start, end, flow, side["frames"], side["flows"].get(start))
            self._write_adapter_rows(job)
        events += self._mark("after_refresh")
        latents = self._call(("denoise", job.bucket, side["embeds"].shape[1]), self.denoiser.denoise,
                             side["noise"], side["source"], side["embeds"], side["mask"])
        events += self._mark("after_unet")
        if self.out_stream is None:
            self._decode_and_download(job, latents, events)
            return
        unet_done = torch.cuda.Event()
        unet_done.record()
        latents.record_stream(self.out_stream)
        with torch.cuda.stream(self.out_stream):
            self.out_stream.wait_event(unet_done)
            self._decode_and_download(job, latents, events, family="out")
        for st, _, _, _, _ in job.segments:  # the next refresh on the main stream warps it
            st.last_output.record_stream(self.main_stream)
            st.last_output_ready = job.side["decoded"]

    def _decode_and_download(self, job: _Job, latents: torch.Tensor, events: list, family: str | None = None) -> None:
        """Decode to uint8 frames, keep each stream's last output for its next refresh, start the download."""
        image, frames = self._call(("decode", job.bucket), self._decode, latents, family=family)
        events += self._mark("main_end")
        b = len(job.rows)
        for st, start, end, _, _ in job.segments:
            st.last_output = image[end - 1].clamp(-1, 1)  # the frame as shown, before quantisation
        if self.out_stream is not None:  # before the download: a refresh on the main stream waits for this much only
            job.side["decoded"] = torch.cuda.Event()
            job.side["decoded"].record()
        job.side["out_frames"] = frames[:b].to("cpu", non_blocking=True) if self.cuda else frames[:b].clone()
        if self.config.keep_latents:
            job.side["latents"] = latents[:b].float().to("cpu", non_blocking=True)
        job.side["main_events"] = events
        if self.cuda:
            job.side["done"] = torch.cuda.Event()
            job.side["done"].record()

    def _finish(self, job: _Job) -> None:
        side = job.side
        if self.cuda:
            side["done"].synchronize()
        job.timings.update(self._stage_timings(side["events"], side["main_events"]))
        job.timings.update(self._gap_timings(side["events"], side["main_events"]))
        job.timings["latency_ms"] = (time.perf_counter() - job.t_submit) * 1e3
        job.timings["t_done"] = time.monotonic()
        b = len(job.rows)
        self.counters["batches"] += 1
        self.counters["frames"] += b
        out = BatchOutput(
            frames=side["out_frames"].numpy().copy() if self.cuda else side["out_frames"].numpy(),
            streams=[st.name for st, _ in job.rows], indices=[i for _, i in job.rows],
            prompts=[job.prompts[st.name] for st, _ in job.rows], timings=job.timings,
            latents=side.get("latents"), bucket=job.bucket,
        )
        job.future.set_result(out)

    # ---- graph capture / plain calls ------------------------------------------------------------------

    def captured(self) -> dict[tuple, CapturedCall]:
        """The CUDA graphs captured so far, by (stage, batch bucket, …): what a benchmark replays stage by stage."""
        return dict(self._graphs)

    def _call(self, key: tuple, fn, *args, family: str | None = None):
        """Run `fn` eagerly on the CPU; on CUDA replay a graph captured for this shape key. Graphs replayed on one
        stream share a memory pool (`family`: the stream; by default side for the encoders, else main); graphs
        that may run at once on different streams must not."""
        if not (self.cuda and self.config.cuda_graphs):
            with torch.no_grad():
                out = fn(*args)
            return out
        graph = self._graphs.get(key)
        if graph is None:
            family = family or ("side" if key[0] in ("vae_encode", "text_encode") else "main")
            log.info("capturing CUDA graph %s", key)
            graph = CapturedCall(fn, args, pool=self._pools.get(family))
            self._pools.setdefault(family, graph.pool)
            self._graphs[key] = graph
        if key[0] in TOKEN_STAGES:
            self._release_token_graphs(key[0], self._token_graphs.use(key[0], key[2]))
        outputs = graph(*args)
        # Static outputs are overwritten by the next replay: hand out copies that the other stream owns safely.
        if isinstance(outputs, tuple):
            return tuple(self._own(o) for o in outputs)
        return self._own(outputs)

    def _release_token_graphs(self, stage: str, lengths: list[int]) -> None:
        """Drop `stage`'s graphs at these token lengths. Called only after a capture (a new length), which synchronised
        the device, and from the thread that launches `stage`: none of them is still running. Their static buffers
        return to the stream's pool for later captures."""
        if not lengths:
            return
        for stale in [k for k in self._graphs if k[0] == stage and k[2] in lengths]:
            del self._graphs[stale]
        log.info("released the CUDA graphs of %s at %s tokens (model.token_graphs %d)", stage, lengths,
                 self.config.token_graphs)

    @staticmethod
    def _own(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.clone()

    def _mark(self, _name: str) -> list:
        if not self.cuda:
            return [time.perf_counter()]
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return [event]

    # ---- execution ------------------------------------------------------------------------------------

    def _ms(self, a, b) -> float:
        """Milliseconds between two marks of `_mark`: CUDA events on the GPU, host clocks on the CPU."""
        return a.elapsed_time(b) if self.cuda else (b - a) * 1e3

    def _stage_timings(self, side: list, main: list) -> dict[str, float]:
        """ms per component from the marks of `_mark`."""
        ms = self._ms
        return {
            "vae_encode_ms": ms(side[0], side[1]), "text_encoder_ms": ms(side[1], side[2]), "side_ms": ms(side[0], side[2]),
            "refresh_ms": ms(main[0], main[1]), "unet_ms": ms(main[1], main[2]), "decode_ms": ms(main[2], main[3]),
            "main_ms": ms(main[0], main[3]),
        }

    def _gap_timings(self, side: list, main: list) -> dict[str, float]:
        """How long the main path stood idle before this batch, and why (runs in batch order).

        main_gap_ms: previous batch's main end → this batch's main start. side_wait_ms: the part of it spent
        waiting for this batch's side path; side_lag_ms: how long after the previous main end this batch's
        side path began (> 0: the batch arrived late, the feeder is the wall, not the GPU).
        """
        # The U-Net's stream ends its part at the decode (2 streams) or after the U-Net (3: decode runs elsewhere).
        prev, self._prev_main_end = self._prev_main_end, main[-1] if self.out_stream is None else main[2]
        if prev is None:
            return {}
        ms = self._ms
        gap = ms(prev, main[0])
        return {"main_gap_ms": gap, "side_wait_ms": min(max(0.0, ms(prev, side[-1])), max(gap, 0.0)),
                "side_lag_ms": ms(prev, side[0])}

    def _run_inline(self, job: _Job) -> None:
        try:
            self._side(job)
            self._main(job)
            self._finish(job)
        except Exception as exc:
            job.future.set_exception(exc)

    def _ensure_threads(self) -> None:
        if self._threads:
            return
        for target, name in ((self._side_loop, "engine-side"), (self._main_loop, "engine-main"), (self._done_loop, "engine-done")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _side_loop(self) -> None:
        torch.cuda.set_device(self.device)
        while (job := self._side_q.get()) is not None:
            try:
                with torch.cuda.stream(self.side_stream):
                    self._side(job)
                    # Made on the side stream, freed only after main used them.
                    for value in [*job.side.values(), *job.side["flows"].values()]:
                        if isinstance(value, torch.Tensor):
                            value.record_stream(self.main_stream)
                    job.side["ready"] = torch.cuda.Event()
                    job.side["ready"].record()
            except Exception as exc:
                log.exception("side stage failed")
                job.future.set_exception(exc)
                continue
            self._main_q.put(job)
        self._main_q.put(None)

    def _main_loop(self) -> None:
        torch.cuda.set_device(self.device)
        while (job := self._main_q.get()) is not None:
            try:
                with torch.cuda.stream(self.main_stream):
                    self.main_stream.wait_event(job.side["ready"])
                    self._main(job)
            except Exception as exc:
                log.exception("main stage failed")
                job.future.set_exception(exc)
                continue
            self._done_q.put(job)
        self._done_q.put(None)

    def _done_loop(self) -> None:
        while (job := self._done_q.get()) is not None:
            try:
                self._finish(job)
            except Exception as exc:
                job.future.set_exception(exc)

    def close(self) -> None:
        """Finish queued batches, stop the threads and the flow pool."""
        if self._closed:
            return
        self._closed = True
        if self._threads:
            self._side_q.put(None)
            for thread in self._threads:
                thread.join()
        if self._own_flows:
            self.flows.close()
        if self.adapter is not None:
            self.adapter.detach()  # the U-Net is shared with whoever loaded the bundle
        for module in self._fp8_modules:
            restore_linears(module)
        if self.group_norms:
            restore_group_norms(self.bundle.unet)
        if self.depthwise_convs:
            restore_depthwise(self.bundle.unet)
        if self.cross_attentions:
            restore_cross_attention(self.bundle.unet)

    def __enter__(self) -> "StreamEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
