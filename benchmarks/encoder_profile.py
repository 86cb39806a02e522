"""Where the text encoder's time goes: one batch of (frame, prompt) pairs through `EditPromptEncoder`.

    python benchmarks/encoder_profile.py [--batch 8] [--profile synthetic-full] [--compile]

Times the encoder alone (no U-Net beside it) eagerly, replayed as a CUDA graph and, with --compile,
compiled by torch.compile and then replayed as a graph; prints the top CUDA kernels of an eager call
and which scaled-dot-product-attention backends accept the language model's attention call.
Writes the figures as JSON under benchmarks/results/. CUDA only: without it the script says so and stops.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.gpu.bench import _device_info  # noqa: E402
from services.gpu.graphs import CapturedCall  # noqa: E402
from services.gpu.profiles import load_profile  # noqa: E402
from services.gpu.prompt_encoder import EditPromptEncoder  # noqa: E402
from shared.records import card_slug, write_result  # noqa: E402


def time_ms(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / repeats


def attention_backends(encoder: EditPromptEncoder, batch: int, length: int) -> dict:
    """Which SDPA kernels take the LM's call (bool mask over prefix + suffix, grouped K/V heads)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    attn = encoder.lm.layers[0].self_attn
    heads, kv_heads, hd = attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim
    p = encoder.prefix_len
    q = torch.randn(batch, heads, length, hd, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, kv_heads, p + length, hd, device="cuda", dtype=torch.bfloat16)
    mask = torch.arange(p + length, device="cuda").view(1, -1) <= torch.arange(length, device="cuda").view(-1, 1) + p
    result = {}
    for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)]:
        for label, kk, gqa in [("gqa", k, True), ("expanded", k.repeat_interleave(heads // kv_heads, 1), False)]:
            try:
                with sdpa_kernel([backend]):
                    fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, kk, kk, attn_mask=mask, enable_gqa=gqa)  # noqa: E731
                    result[f"{name}/{label}"] = round(time_ms(fn, 50), 4)
            except RuntimeError as exc:
                result[f"{name}/{label}"] = f"unsupported: {str(exc).splitlines()[0][:80]}"
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--profile", default="synthetic-full")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("encoder_profile: CUDA is not available; this script measures GPU kernels only", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    bundle = load_profile(args.profile, device=device, dtype=torch.bfloat16)
    enc = EditPromptEncoder(bundle.text_encoder, bundle.tokenizer, bundle.vision, 256).eval()
    b = args.batch
    frames = torch.rand(b, 3, args.size, args.size, device=device)
    ids, pos, lengths = enc.pack([enc.layout("turn it into an oil painting with thick brush strokes")] * b)
    cos, sin = enc.rope_tables(pos.to(device), torch.bfloat16)
    inputs = (frames, ids.to(device), cos, sin, lengths.to(device))
    with torch.no_grad():
        enc.prefix_cache(device, torch.bfloat16)
        enc._vision_constants(device, torch.bfloat16)
        reference = enc(*inputs)[0].float()
        record = {"batch": b, "tokens": int(ids.shape[1]), "prefix": enc.prefix_len, "ms_per_batch": {}}
        record["ms_per_batch"]["eager"] = time_ms(lambda: enc(*inputs))
        vision_in = enc.preprocess(frames)
        record["ms_per_batch"]["eager_vision_only"] = time_ms(lambda: enc.vision_forward(vision_in))
        graph = CapturedCall(enc, inputs)
        record["ms_per_batch"]["graph"] = time_ms(lambda: graph(*inputs))
        record["sdpa_backends_ms"] = attention_backends(enc, b, int(ids.shape[1]))
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                enc(*inputs)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
        print(table)
        record["top_kernels"] = table
        if args.compile:
            compiled = torch.compile(enc.forward, dynamic=False)
            cgraph = CapturedCall(compiled, inputs)
            record["ms_per_batch"]["compiled_graph"] = time_ms(lambda: cgraph(*inputs))
            out = cgraph(*inputs)[0].float()
            record["compiled_cosine"] = float(torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0))
            record["compiled_max_abs_diff"] = float((out - reference).abs().max())
    record["ms_per_frame"] = {k: round(v / b, 3) for k, v in record["ms_per_batch"].items()}
    record.update(_device_info(device), command=" ".join(sys.argv), profile=args.profile)
    print(json.dumps({k: v for k, v in record.items() if k != "top_kernels"}, indent=1))
    path = write_result(record, args.out, f"encoder_profile_{card_slug(record['card'])}_B{b}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
