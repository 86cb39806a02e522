"""Release file frames at their native rate, so a file behaves like a camera."""

from __future__ import annotations

import time


class Pacer:
    """Sleeps until each frame's presentation time, measured from the first frame.

    The schedule is anchored once; a consumer that falls behind gets the late frames at once
    (as a camera's socket buffer would), never skipped: ingest, not the pacer, decides drops.
    """

    def __init__(self, clock=time.monotonic, sleep=time.sleep) -> None:
        self._clock, self._sleep = clock, sleep
        self._anchor_wall: float | None = None
        self._anchor_media: float = 0.0

    def wait_for(self, media_time_s: float) -> float:
        """Sleep until the frame is due; returns how late it is released (s, 0 when on time), so the
        frame's capture time can be its due time, as a camera would stamp it."""
        if self._anchor_wall is None:
            self._anchor_wall, self._anchor_media = self._clock(), media_time_s
            return 0.0
        delay = self._anchor_wall + (media_time_s - self._anchor_media) - self._clock()
        if delay > 0:
            self._sleep(delay)
            return 0.0
        return -delay
