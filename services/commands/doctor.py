"""`stylecast doctor`: check that this machine can run StyleCast as configured, and say what to fix.

Each check gives OK, WARN (runs, but not as well as it could) or FAIL (will not run as configured)
with a one-line finding and, unless OK, what to do. The exit code is 1 when any check FAILs.
Nothing is changed on the machine: ports are bound and released, the H.264 round trip runs in memory.
"""

from __future__ import annotations

import enum
import errno
import importlib.metadata
import io
import json
import math
import os
import socket
import stat
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import typer

GIB = 2**30
MIB = 2**20
MIN_GPU_MEMORY_GIB = 12  # synthetic-full at B=16 reserves about 12.5 GiB on an H100 (README figures)
KEY_PACKAGES = ("torch", "diffusers", "transformers")
# Distributions that provide the same import as the declared one (OpenCV ships as four wheels of `cv2`).
_ALTERNATIVES = {"opencv-python-headless": ("opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python")}


class Status(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


# --------------------------------------------------------------------------------------------------
# Hardware and packages
# --------------------------------------------------------------------------------------------------


def check_cuda(device_setting: str) -> list[Check]:
    """One row per visible CUDA device, or one row saying plainly that there is none."""
    import torch

    build = f"torch {torch.__version__}, " + (f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build")
    if not torch.cuda.is_available():
        wants_cuda = device_setting.startswith("cuda")
        return [Check(
            "cuda", Status.FAIL if wants_cuda else Status.WARN,
            f"no CUDA GPU is visible ({build}); "
            + (f"model.device is {device_setting!r}, so the GPU worker cannot start" if wants_cuda
               else "StyleCast will run on the CPU, practical only for synthetic-tiny at small sizes"),
            "on a GPU host: install the NVIDIA driver and a CUDA build of torch (see deploy/README.md); in a "
            "container pass the GPU (docker --gpus all, or the nvidia.com/gpu resource on Kubernetes)",
        )]
    rows = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        memory = props.total_memory / GIB
        detail = f"cuda:{index} {props.name}, {memory:.1f} GiB, compute capability {props.major}.{props.minor} ({build})"
        if (props.major, props.minor) < (8, 0):
            rows.append(Check(f"cuda:{index}", Status.WARN, detail + ": no native bfloat16",
                              "use an Ampere (8.0) or newer card; model.dtype float32 works but is slow"))
        elif memory < MIN_GPU_MEMORY_GIB:
            rows.append(Check(f"cuda:{index}", Status.WARN, detail + f": under {MIN_GPU_MEMORY_GIB} GiB",
                              "use engine.batch 8 or less, or a card with more memory"))
        else:
            rows.append(Check(f"cuda:{index}", Status.OK, detail))
    return rows


def _requirements() -> dict[str, object]:
    """StyleCast's declared requirements by package name, from the installed distribution's metadata."""
    from packaging.requirements import Requirement

    found = {}
    for line in importlib.metadata.requires("stylecast") or []:
        requirement = Requirement(line)
        if requirement.marker is None:  # extras (cpu, dev) carry markers: not needed to run
            found[requirement.name.lower()] = requirement
    return found


def check_packages() -> list[Check]:
    """torch, diffusers and transformers by name, then every other runtime requirement in one row."""
    try:
        requirements = _requirements()
    except importlib.metadata.PackageNotFoundError:
        return [Check("packages", Status.FAIL, "stylecast is not installed as a package, so its requirements are unknown",
                      'pip install -e ".[dev]" (or ".[cpu,dev]" on a CPU machine) from the repository')]
    rows, broken = [], []
    key_order = {name: i for i, name in enumerate(KEY_PACKAGES)}
    for name, requirement in sorted(requirements.items(), key=lambda item: (key_order.get(item[0], len(KEY_PACKAGES)), item[0])):
        version, ok = None, False
        for candidate in (name, *_ALTERNATIVES.get(name, ())):
            try:
                version = importlib.metadata.version(candidate)
            except importlib.metadata.PackageNotFoundError:
                continue
            ok = requirement.specifier.contains(version, prereleases=True)
            if ok:
                break
        wanted = str(requirement.specifier) or "any version"
        if name in KEY_PACKAGES:
            detail = f"{name} {version or 'is not installed'} (StyleCast wants {wanted})"
            rows.append(Check(name, Status.OK if ok else Status.FAIL, detail, "" if ok else f'pip install "{requirement}"'))
        elif not ok:
            broken.append(f"{name} {version or 'missing'} (wants {wanted})")
    if broken:
        rows.append(Check("other packages", Status.FAIL, "; ".join(broken), 'pip install -e . again to get the declared versions'))
    else:
        rows.append(Check("other packages", Status.OK, f"{len(requirements) - len(KEY_PACKAGES)} more requirements satisfied"))
    rows.append(_check_model_classes())
    return rows


def _check_model_classes() -> Check:
    # The exact classes the engine loads: a diffusers or transformers without them cannot serve.
    missing = []
    try:
        import diffusers

        for name in ("DreamLiteUNetModel", "AutoencoderTiny", "FlowMatchEulerDiscreteScheduler"):
            if not hasattr(diffusers, name):
                missing.append(f"diffusers.{name}")
    except ImportError as exc:
        missing.append(f"diffusers ({exc})")
    try:
        import transformers

        if not hasattr(transformers, "Qwen3VLForConditionalGeneration"):
            missing.append("transformers.Qwen3VLForConditionalGeneration")
    except ImportError as exc:
        missing.append(f"transformers ({exc})")
    if missing:
        return Check("model classes", Status.FAIL, "missing: " + ", ".join(missing), "install the versions the packages rows name")
    return Check("model classes", Status.OK, "DreamLiteUNetModel, AutoencoderTiny, Qwen3VLForConditionalGeneration importable")


def check_h264(frames: int = 8, size: int = 64) -> Check:
    """Encode `frames` moving test frames with the egress's own H.264 setup, decode them back, compare."""
    import av
    import numpy as np

    from services.egress.h264 import H264Settings, add_h264_stream, to_yuv_frame

    yy, xx = np.mgrid[0:size, 0:size]
    originals = []
    for i in range(frames):
        rgb = np.stack([(xx * 4 + i * 8) % 256, (yy * 4) % 256, np.full_like(xx, 128)], -1).astype(np.uint8)
        originals.append(rgb)
    buffer = io.BytesIO()
    try:
        with av.open(buffer, "w", format="mp4") as container:
            stream = add_h264_stream(container, size, 25, H264Settings(crf=12))
            for i, rgb in enumerate(originals):
                for packet in stream.encode(to_yuv_frame(rgb, i)):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        buffer.seek(0)
        with av.open(buffer, "r") as container:
            codec = container.streams.video[0].codec_context.name
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        return Check("h264", Status.FAIL, f"H.264 round trip through PyAV {av.__version__} failed: {exc}",
                     "reinstall PyAV from its wheel (pip install --force-reinstall av), which ships FFmpeg with libx264")
    error = float(np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(originals, decoded)])) if decoded else math.inf
    if codec != "h264" or len(decoded) != frames or error > 8:
        return Check("h264", Status.FAIL,
                     f"encoded {frames} frames, decoded {len(decoded)} {codec} frames, mean error {error:.1f} levels",
                     "reinstall PyAV from its wheel (pip install --force-reinstall av)")
    return Check("h264", Status.OK, f"libx264 encode + decode of {frames} frames through PyAV {av.__version__} "
                                    f"(mean error {error:.1f} levels)")


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def check_profile(profile: str) -> Check:
    """A synthetic profile (random weights, said plainly), or a checkpoint directory in diffusers layout."""
    from services.gpu.profiles import COMPONENTS, SYNTHETIC_PROFILES

    if profile in SYNTHETIC_PROFILES:
        # Nothing is broken, so OK; but the row says plainly that the output will be noise-like.
        return Check("model profile", Status.OK, f"{profile}: RANDOM WEIGHTS, the output is not a stylisation "
                                                 "(give a checkpoint directory with --profile to check real weights)")
    root = Path(profile).expanduser()
    fix = "point model.profile at a DreamLite-mobile checkpoint in diffusers layout (model_index.json + one folder per component)"
    if not root.is_dir():
        return Check("model profile", Status.FAIL, f"{profile} is not a directory", fix)
    index_path = root / "model_index.json"
    try:
        index = json.loads(index_path.read_text())
    except FileNotFoundError:
        return Check("model profile", Status.FAIL, f"{index_path} is missing", fix)
    except (OSError, json.JSONDecodeError) as exc:
        return Check("model profile", Status.FAIL, f"{index_path} is not readable JSON ({exc})", fix)
    problems = []
    for component in COMPONENTS:
        folder = root / component
        if component not in index:
            problems.append(f"model_index.json lists no {component}")
        elif not folder.is_dir():
            problems.append(f"{component}/ is missing")
        elif not any(folder.iterdir()):
            problems.append(f"{component}/ is empty")
    for component in ("unet", "vae", "text_encoder"):
        folder = root / component
        if folder.is_dir() and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            problems.append(f"{component}/ holds no weights (*.safetensors)")
    if problems:
        return Check("model profile", Status.FAIL, f"{root}: " + "; ".join(problems), fix)
    return Check("model profile", Status.OK, f"{root}: model_index.json and {', '.join(COMPONENTS)} present")


def check_taesd(path: str | None) -> Check:
    from services.gpu.taesd import DECODER_FILE, ENCODER_FILE

    if path is None:
        return Check("taesd", Status.OK, "not configured: the VAE comes from the profile (random for synthetic profiles)")
    root = Path(path).expanduser()
    missing = [name for name in (ENCODER_FILE, DECODER_FILE) if not (root / name).is_file()]
    if not root.is_dir() or missing:
        return Check("taesd", Status.FAIL, f"{root}: " + ("not a directory" if not root.is_dir() else f"missing {', '.join(missing)}"),
                     f"model.taesd_path must be a folder with {ENCODER_FILE} and {DECODER_FILE}")
    sizes = sum((root / name).stat().st_size for name in (ENCODER_FILE, DECODER_FILE))
    return Check("taesd", Status.OK, f"{root}: encoder and decoder weights ({sizes / MIB:.1f} MiB)")


# --------------------------------------------------------------------------------------------------
# The host: ports, shared memory, runtime directory
# --------------------------------------------------------------------------------------------------


def _port_problem(host: str, port: int) -> str | None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"{host!r} does not resolve ({exc.strerror})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the API server does
        try:
            sock.bind(address)
            sock.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"{host}:{port} is in use"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"no local interface has the address {host}"
            return f"{host}:{port}: {exc.strerror or exc}"
    return None


def check_ports(service) -> list[Check]:
    from shared.bus import _UNIX_PATH_MAX, ENDPOINTS

    rows = []
    problem = _port_problem(service.api_host, service.api_port)
    rows.append(Check("api port", Status.FAIL, problem,
                      "stop what holds it (another StyleCast?) or set service.api_port") if problem
                else Check("api port", Status.OK, f"{service.api_host}:{service.api_port} is free"))
    if service.bus_transport == "tcp":
        ports = range(service.bus_tcp_base_port, service.bus_tcp_base_port + len(ENDPOINTS))
        taken = [p for p in (_port_problem(service.bus_tcp_host, port) for port in ports) if p]
        rows.append(Check("bus ports", Status.FAIL, "; ".join(taken), "set service.bus_tcp_base_port to a free range") if taken
                    else Check("bus ports", Status.OK, f"tcp {service.bus_tcp_host}:{ports.start}-{ports.stop - 1} free"))
    else:
        longest = max(ENDPOINTS, key=len)
        sample = Path(service.runtime_dir) / "runs" / ("x" * 12) / f"{longest}.sock"  # run ids are 12 characters
        length = len(os.fsencode(sample))
        rows.append(Check("bus sockets", Status.FAIL, f"ipc socket paths reach {length} bytes, over the {_UNIX_PATH_MAX}-byte limit",
                          "choose a shorter service.runtime_dir") if length > _UNIX_PATH_MAX
                    else Check("bus sockets", Status.OK, f"ipc sockets under {service.runtime_dir}/runs (paths up to {length} bytes)"))
    return rows


def ring_bytes(slots: int, shape: tuple[int, ...], itemsize: int) -> int:
    """Size of one shared-memory ring segment (the layout of shared/ring.py)."""
    from shared.ring import _ALIGN, _RING_HEADER_BYTES, _SLOT_HEADER_BYTES

    payload = math.prod(shape) * itemsize
    stride = (_SLOT_HEADER_BYTES + payload + _ALIGN - 1) // _ALIGN * _ALIGN
    return _RING_HEADER_BYTES + slots * stride


def stream_shm_bytes(settings) -> int:
    """Shared memory one stream takes: input, output and flow rings, sized as the supervisor sizes them."""
    size, batch = settings.engine.size, settings.engine.batch
    slots = settings.stream_ring_slots()
    return (2 * ring_bytes(slots, (size, size, 3), 1)) + ring_bytes(2 * batch, (size, size, 2), 4)


def check_shm(settings, shm_dir: str = "/dev/shm") -> Check:
    fix = ("give the machine more shared memory: docker --shm-size / compose shm_size, a Kubernetes emptyDir "
           "with medium Memory on /dev/shm, or fewer streams, smaller engine.size or service.ring_slots")
    try:
        fs = os.statvfs(shm_dir)
    except OSError as exc:
        return Check("shared memory", Status.FAIL, f"{shm_dir}: {exc.strerror}", "StyleCast needs a tmpfs at /dev/shm")
    free, total = fs.f_bavail * fs.f_frsize, fs.f_blocks * fs.f_frsize
    per_stream = stream_shm_bytes(settings)
    streams = len(settings.streams)
    fits = free // per_stream
    where = f"{shm_dir}: {free / MIB:.0f} MiB free of {total / MIB:.0f} MiB; one stream at size {settings.engine.size} needs {per_stream / MIB:.1f} MiB"
    if streams and streams * per_stream > free:
        return Check("shared memory", Status.FAIL, f"{where}; the {streams} configured streams need {streams * per_stream / MIB:.0f} MiB", fix)
    if fits < 1:
        return Check("shared memory", Status.FAIL, f"{where}: not even one fits", fix)
    return Check("shared memory", Status.OK, f"{where}: room for {fits} stream(s)" + (f", {streams} configured" if streams else ""))


def check_runtime_dir(path: Path) -> Check:
    path = Path(path)
    if not path.exists():
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            return Check("runtime dir", Status.FAIL, f"{path} does not exist and {parent} is not writable",
                         "set service.runtime_dir to a directory this user may create")
        return Check("runtime dir", Status.OK, f"{path} will be created (mode 0700) under {parent}")
    st = os.lstat(path)
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return Check("runtime dir", Status.FAIL, f"{path} is not a plain directory", "remove it or set service.runtime_dir")
    if st.st_uid != os.getuid():
        return Check("runtime dir", Status.FAIL, f"{path} belongs to uid {st.st_uid}, not this user ({os.getuid()})",
                     "run as its owner, or set service.runtime_dir to a directory of your own")
    if mode & 0o077:
        return Check("runtime dir", Status.FAIL, f"{path} has mode {mode:04o}: others can reach the bus sockets", f"chmod 700 {path}")
    if not os.access(path, os.W_OK | os.X_OK):
        return Check("runtime dir", Status.FAIL, f"{path} is not writable", f"chmod 700 {path}")
    return Check("runtime dir", Status.OK, f"{path}: private (mode {mode:04o}), owned by this user")


# --------------------------------------------------------------------------------------------------
# All of it
# --------------------------------------------------------------------------------------------------


def run_checks(settings, *, profile: str | None = None, taesd: str | None = None, shm_dir: str = "/dev/shm") -> list[Check]:
    """Every check, for `settings`; `profile`/`taesd` override the settings' model paths."""
    rows = [Check("python", Status.OK if sys.version_info >= (3, 11) else Status.FAIL, f"Python {sys.version.split()[0]}",
                  "" if sys.version_info >= (3, 11) else "StyleCast needs Python 3.11 or newer")]
    rows += check_cuda(settings.model.device)
    rows += check_packages()
    rows.append(check_h264())
    rows.append(check_profile(profile or settings.model.profile))
    taesd_path = taesd or (str(settings.model.taesd_path) if settings.model.taesd_path else None)
    rows.append(check_taesd(taesd_path))
    rows += check_ports(settings.service)
    rows.append(check_shm(settings, shm_dir))
    rows.append(check_runtime_dir(settings.service.runtime_dir))
    return rows


def render_table(rows: list[Check], width: int = 100) -> str:
    name_width = max(len(r.name) for r in rows)
    indent = " " * (name_width + 10)
    lines = [f"{'CHECK'.ljust(name_width)}  STATUS  FINDING / WHAT TO DO", "-" * min(width, 120)]
    for row in rows:
        detail = textwrap.wrap(row.detail, max(40, width - len(indent))) or [""]
        lines.append(f"{row.name.ljust(name_width)}  {row.status.value.ljust(6)}  {detail[0]}")
        lines += [indent + more for more in detail[1:]]
        if row.fix:
            fix = textwrap.wrap("-> " + row.fix, max(40, width - len(indent)))
            lines += [indent + part for part in fix]
    counts = {status: sum(r.status is status for r in rows) for status in Status}
    lines.append(f"\n{counts[Status.OK]} OK, {counts[Status.WARN]} WARN, {counts[Status.FAIL]} FAIL")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command()
    def doctor(
        config: Path = typer.Option(None, help="YAML settings file to check against (default: built-in defaults + STYLECAST_* environment)."),
        profile: str = typer.Option(None, help="Model profile to check (overrides model.profile): a checkpoint directory or a synthetic profile."),
        taesd: str = typer.Option(None, help="TAESDXL weights folder to check (overrides model.taesd_path)."),
        as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON instead of a table."),
    ) -> None:
        """Check CUDA, packages, H.264, weights, ports, shared memory and the runtime directory; exit 1 on any FAIL."""
        from shared.settings import ConfigError, Settings, default_runtime_dir, load_settings

        rows = []
        try:
            settings = load_settings(config)
            if config is not None:
                rows.append(Check("config", Status.OK, f"{config} is valid ({len(settings.streams)} stream(s))"))
        except ConfigError as exc:
            rows.append(Check("config", Status.FAIL, "; ".join(exc.problems), "fix the fields named (stylecast config-reference lists them all)"))
            settings = Settings(service={"runtime_dir": default_runtime_dir()})
        rows += run_checks(settings, profile=profile, taesd=taesd)
        if as_json:
            typer.echo(json.dumps([{"check": r.name, "status": r.status.value, "detail": r.detail, "fix": r.fix} for r in rows], indent=2))
        else:
            typer.echo(render_table(rows))
        if any(r.status is Status.FAIL for r in rows):
            raise typer.Exit(1)
