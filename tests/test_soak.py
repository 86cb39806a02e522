"""A few minutes of four concurrent streams (two live cameras, two paced files): memory and file
descriptors stay flat, and the file streams lose nothing. The long version (30 minutes, 8 streams)
is benchmarks/soak.py."""

from __future__ import annotations

import os


from tests.support.rtsp_server import RtspServer, gstreamer_missing_reason
from tests.support.soak import SoakProbe, long_clip
from tests.support.service import Service, wait_for

SECONDS = float(os.environ.get("STYLECAST_SOAK_SECONDS", "100"))


def test_four_streams_hold_steady(tmp_path, reliability):
    fps = 12
    frames = int(SECONDS * fps)
    clip = long_clip(tmp_path / "long.mp4", frames, fps)
    cameras = [RtspServer(fps=10).start() for _ in range(2)] if gstreamer_missing_reason() is None else []
    streams = [{"name": f"file{i}", "source": str(clip), "prompt": "oil", "pace": True,
                "sinks": [{"type": "mp4", "target": str(tmp_path / f"file{i}.mp4")}]} for i in range(4 - len(cameras))]
    streams += [{"name": f"cam{i}", "source": cam.url, "prompt": "watercolour"} for i, cam in enumerate(cameras)]
    svc = Service(tmp_path, streams, engine={"batch": 8})
    try:
        svc.wait_ready()
        probe = SoakProbe(svc)

        def files_done() -> bool:
            done = all(svc.stream(s["name"])["state"] == "stopped" for s in streams if s["name"].startswith("file"))
            if not done:  # sample only while every process is up (ended streams' processes exit)
                probe.sample()
            return done

        wait_for(files_done, SECONDS * 4 + 120, "the file streams to end", poll=5.0)
        files = [s["name"] for s in streams if s["name"].startswith("file")]
        written = {name: svc.frames_out(name) for name in files}
        cams_out = {s["name"]: svc.stream(s["name"]) for s in streams if s["name"].startswith("cam")}
        assert svc.stop() == 0
    finally:
        svc.kill()
        for cam in cameras:
            cam.stop()
    report = probe.report()
    assert all(n == frames for n in written.values()), written
    assert report["rss_growth_mib"] < 150, report
    assert report["fd_spread"] <= 16, report
    dropped = sum(sum(info["counters"]["dropped"].values()) for info in cams_out.values())
    reliability.record("load", f"soak: {len(files)} paced files + {len(cameras)} live cameras, {SECONDS:.0f} s",
                       "memory and fds flat, files lossless", frames_lost=0,
                       detail=f"RSS growth {report['rss_growth_mib']:.0f} MiB, fd spread {report['fd_spread']}, "
                       f"{report['samples']} samples; cameras dropped {dropped} (counted, CPU slower than sources)")
