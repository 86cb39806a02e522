"""The VAE's convolutions alone: how fast cuDNN runs each of TAESDXL's convolution shapes, and the engine's
encode and decode stages under each way of compiling them.

    python benchmarks/vae_convolutions.py --batch 16 [--modes eager compiled autotune] [--out benchmarks/results]

TAESDXL is 64-channel 3×3 convolutions down to 1/8 of the frame and back up: 264 GFLOP per 512² frame, half of
it at full resolution. Inside the engine the convolutions ran at ≈ 190 TFLOP/s (NOTES 38), a quarter of the
card's dense bf16 rate, so this script says where that goes: per shape, cuDNN's time and rate (with its
heuristic choice, as the engine runs, and with `cudnn.benchmark` timing every algorithm), then the two stages
(the engine's own `_vae_encode_fn` arithmetic and `EditDenoiser.decode`, random TAESDXL-shaped weights, bf16,
channels-last) replayed as CUDA graphs: uncompiled, compiled as the engine compiles them, and compiled with
inductor's autotuning, which times its Triton convolution templates against cuDNN per shape and can fuse the
bias, ReLU and residual into the winner's epilogue. Outputs are compared with the compiled stage's. CUDA only.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.encoder_profile import time_ms  # noqa: E402
from shared.records import GrowingRecord, card_slug  # noqa: E402

MODES = ("eager", "compiled", "autotune")
# torch.compile arguments per mode (the engine's `compiled` uses mode="default", dynamic=False, fullgraph=True).
COMPILE = {
    "compiled": {"mode": "default"},
    # Options instead of a mode: the engine captures its own CUDA graphs, so inductor's are left off.
    "autotune": {"options": {"max_autotune": True}},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--trace", type=int, default=3, help="replays traced per stage for the kernel ranking")
    parser.add_argument("--no-shapes", action="store_true", help="skip the per-shape cuDNN table")
    parser.add_argument("--out", default="benchmarks/results")
    return parser.parse_args(argv)


def conv_shapes(vae, batch: int, size: int) -> list[dict]:
    """Every distinct convolution of the VAE's encoder and decoder at this batch and frame size, with its count."""
    import torch

    seen: dict[tuple, dict] = {}

    def note(module, inputs, output):
        x = inputs[0]
        key = (module.in_channels, module.out_channels, module.stride[0], x.shape[2])  # a bias is its own pass
        entry = seen.setdefault(key, {"in": key[0], "out": key[1], "stride": key[2], "height": key[3],
                                      "count": 0, "gflop_per_frame": 0.0})
        entry["count"] += 1
        entry["gflop_per_frame"] += 2 * output[0].numel() * module.in_channels * 9 / 1e9

    hooks = [m.register_forward_hook(note) for m in vae.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        frame = torch.zeros(1, 3, size, size, device=next(vae.parameters()).device, dtype=next(vae.parameters()).dtype)
        vae.decoder(vae.encoder(frame))
    for hook in hooks:
        hook.remove()
    return list(seen.values())


def time_shapes(shapes: list[dict], batch: int, repeats: int) -> list[dict]:
    """cuDNN per shape, bf16 channels-last, bias peeled off as inductor does: heuristic choice, then benchmarked."""
    import torch
    import torch.nn.functional as F

    rows = []
    for shape in shapes:
        x = torch.randn(batch, shape["in"], shape["height"], shape["height"], device="cuda", dtype=torch.bfloat16)
        x = x.to(memory_format=torch.channels_last)
        w = torch.randn(shape["out"], shape["in"], 3, 3, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
        row = dict(shape)
        per_call_gflop = shape["gflop_per_frame"] / shape["count"] * batch
        for label, benchmark in (("heuristic", False), ("benchmarked", True)):
            torch.backends.cudnn.benchmark = benchmark
            ms = time_ms(lambda: F.conv2d(x, w, None, shape["stride"], 1), repeats)
            row[f"{label}_ms"] = ms
            row[f"{label}_tflops"] = per_call_gflop / ms
        torch.backends.cudnn.benchmark = False
        rows.append(row)
    return rows


def stage_functions(vae):
    """The engine's VAE stages on `vae`: its encode (uint8 NHWC frames → latents) and EditDenoiser.decode."""
    from services.gpu.denoise import EditDenoiser
    from services.gpu.engine import unit_pixels

    # EditDenoiser's encode/decode read only these attributes; the U-Net and scheduler play no part in them.
    holder = SimpleNamespace(vae=vae, vae_scale=float(vae.config.scaling_factor or 1.0),
                             vae_shift=float(getattr(vae.config, "shift_factor", 0.0) or 0.0))

    def encode(frames_u8):
        return EditDenoiser.encode(holder, unit_pixels(frames_u8))

    def decode(latents):
        return EditDenoiser.decode(holder, latents)

    return encode, decode


def measure_mode(mode: str, vae, frames, latents, args) -> dict:
    import torch

    from benchmarks.stage_kernels import trace_replays
    from services.gpu.graphs import CapturedCall

    encode, decode = stage_functions(vae)
    result = {"mode": mode, "stages": {}}
    outputs = {}
    for name, fn, example in (("vae_encode", encode, frames), ("decode", decode, latents)):
        if mode in COMPILE:
            fn = torch.compile(fn, dynamic=False, fullgraph=True, **COMPILE[mode])
        t0 = time.perf_counter()
        call = CapturedCall(fn, (example,))  # the warm-up inside compiles (and autotunes) outside the capture
        build_s = time.perf_counter() - t0
        ms = time_ms(call.graph.replay, args.repeats)
        kernels = trace_replays(call, args.trace, args.batch)
        outputs[name] = [o.clone() for o in (call.static_outputs if isinstance(call.static_outputs, tuple)
                                              else (call.static_outputs,))]
        result["stages"][name] = {"ms_per_call": ms, "ms_per_frame": ms / args.batch, "build_s": build_s,
                                  "kernels": kernels}
        print(f"{mode} {name}: {ms:.3f} ms per call, {ms / args.batch:.3f} ms/frame (built in {build_s:.0f} s); "
              + ", ".join(f"{k} {v:.3f}" for k, v in kernels["families_ms_per_frame"].items()), flush=True)
    return result, outputs


def compare(outputs: dict, reference: dict) -> dict:
    """Each stage's outputs against the reference mode's: latents by cosine and max |Δ|, frames in grey levels."""
    import torch.nn.functional as F

    latents, ref_latents = outputs["vae_encode"][0].float().flatten(), reference["vae_encode"][0].float().flatten()
    frames, ref_frames = outputs["decode"][1].int(), reference["decode"][1].int()
    return {"latent_cosine": F.cosine_similarity(latents, ref_latents, dim=0).item(),
            "latent_max_abs": (latents - ref_latents).abs().max().item(),
            "frame_max_grey_levels": (frames - ref_frames).abs().max().item(),
            "frame_mean_grey_levels": (frames - ref_frames).abs().float().mean().item()}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("vae_convolutions.py times CUDA kernels: it needs a CUDA GPU, and none is visible", file=sys.stderr)
        return 2
    from diffusers import AutoencoderTiny

    from services.gpu.bench import _device_info
    from services.gpu.profiles import VAE_FULL

    torch.manual_seed(0)
    vae = AutoencoderTiny(**VAE_FULL).to("cuda", torch.bfloat16).eval().requires_grad_(False)
    vae.to(memory_format=torch.channels_last)  # as the engine's default channels_last=("vae",)
    record = {
        "kind": "vae_convolutions", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv), **_device_info(torch.device("cuda")), "note": "random weights: speed only",
        "batch": args.batch, "size": args.size, "shapes": [], "modes": [],
    }
    growing = GrowingRecord(record, args.out, f"vae_convolutions_{card_slug(record['card'])}_B{args.batch}_S{args.size}")
    shapes = conv_shapes(vae, args.batch, args.size)
    record["gflop_per_frame"] = sum(s["gflop_per_frame"] for s in shapes)
    if not args.no_shapes:
        record["shapes"] = time_shapes(shapes, args.batch, args.repeats)
        growing.save()
        for row in record["shapes"]:
            print(f"conv {row['in']}→{row['out']} s{row['stride']} at {row['height']}² ×{row['count']}: "
                  f"{row['heuristic_ms']:.3f} ms ({row['heuristic_tflops']:.0f} TFLOP/s), benchmarked "
                  f"{row['benchmarked_ms']:.3f} ms ({row['benchmarked_tflops']:.0f})", flush=True)
    generator = torch.Generator("cuda").manual_seed(1)
    frames = torch.randint(0, 256, (args.batch, args.size, args.size, 3), device="cuda", dtype=torch.uint8,
                           generator=generator)
    latents = torch.randn(args.batch, 4, args.size // 8, args.size // 8, device="cuda", dtype=torch.bfloat16,
                          generator=generator)
    reference = None
    for mode in args.modes:
        result, outputs = measure_mode(mode, vae, frames, latents, args)
        if reference is None:
            reference = outputs
            result["reference"] = True
        else:
            result["against_" + args.modes[0]] = compare(outputs, reference)
            print(f"{mode} against {args.modes[0]}: {result['against_' + args.modes[0]]}", flush=True)
        record["modes"].append(result)
        growing.save()
    return growing.done()


if __name__ == "__main__":
    raise SystemExit(main())
