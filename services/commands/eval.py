"""`stylecast eval INPUT OUTPUT`: the paper's quality metrics (shared.quality.evaluate) for one stylised clip."""

from __future__ import annotations

import typer

# evaluate() raises these for bad input; each message names the file and the problem.
_USER_ERRORS = (FileNotFoundError, ValueError)  # VideoError and FrameCountMismatchError are ValueErrors
# The flags that turn a skipped metric on (evaluate()'s reasons name its keyword arguments).
_ENABLE = {"lpips_input_output": "--lpips-weights FILE", "clip_similarity_output": "--clip-weights DIR --prompt TEXT"}


def register(app: typer.Typer) -> None:
    app.command(name="eval")(evaluate_command)


def evaluate_command(
    input_path: str = typer.Argument(..., metavar="INPUT", help="The source video."),
    output_path: str = typer.Argument(..., metavar="OUTPUT", help="The stylised video (same number of frames)."),
    json_path: str = typer.Option(None, "--json", help="Write the full report (per-frame series) as JSON here."),
    plot_path: str = typer.Option(None, "--plot", help="Write a PNG of the metric curves and sample frames here."),
    lpips_weights: str = typer.Option(None, help="LPIPS-Alex weights (.safetensors); without them LPIPS is skipped."),
    clip_weights: str = typer.Option(None, help="Local CLIP model directory; needs --prompt. Without it CLIP is skipped."),
    prompt: str = typer.Option(None, help="The edit instruction, for CLIP similarity."),
) -> None:
    """Warping error, sharpness (Sobel, HF-FFT), LPIPS and CLIP of OUTPUT against INPUT (paper §IV-A)."""
    from shared.quality import evaluate

    try:
        report = evaluate(input_path, output_path, json_path=json_path, plot_path=plot_path,
                          lpips_weights=lpips_weights, clip_weights=clip_weights, prompt=prompt)
    except _USER_ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for line in summary_lines(report):
        typer.echo(line)
    if json_path:
        typer.echo(f"report: {json_path}")
    if plot_path:
        typer.echo(f"plot: {plot_path}")


def summary_lines(report: dict) -> list[str]:
    """Per-clip means of the metrics that ran, then each skipped metric with the reason."""
    size = f"{report['output']['width']}x{report['output']['height']}"
    fitted = " (input centre-cropped and resized to the output size)" if report["input_fitted_to_output"] else ""
    cuts = ", ".join(map(str, report["scene_cuts"])) or "none"
    lines = [f"{report['frames']} frames at {size}{fitted}; scene cuts in the input at frames: {cuts}"]
    metrics = report["metrics"]
    width = max(len(name) for name in metrics)
    for name, metric in metrics.items():
        if metric["status"] != "ok":
            continue
        line = f"  {name:<{width}}  {_number(metric['mean'])}  {metric['unit']}"
        if "mean_without_scene_cuts" in metric and report["scene_cuts"]:
            line += f"  (without cut frames: {_number(metric['mean_without_scene_cuts'])})"
        lines.append(line)
    skipped = [(name, metric["reason"]) for name, metric in metrics.items() if metric["status"] == "skipped"]
    if skipped:
        lines.append("skipped:")
        lines += [f"  {name}: {reason} [enable with {_ENABLE[name]}]" if name in _ENABLE else f"  {name}: {reason}"
                  for name, reason in skipped]
    return lines


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4g}"
