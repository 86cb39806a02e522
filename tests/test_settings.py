"""Settings: layered loading, readable errors, and credentials that never print."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from shared.settings import (
    ConfigError,
    EngineSettings,
    SecretUrl,
    Settings,
    SinkSettings,
    SourceKind,
    StreamSettings,
    default_runtime_dir,
    load_settings,
    parse_stream,
    redact_url,
    settings_from_json,
    settings_reference,
    settings_to_json,
)

PASSWORD = "hunter2-s3cret"
CAMERA = f"rtsp://admin:{PASSWORD}@10.0.0.5:554/stream1"
TOKEN = "tok-0123456789abcdef-XYZ"


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00")
    return path


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def problems(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return exc.value.problems


# ---- layering -------------------------------------------------------------------------------------


def test_defaults_without_any_source(tmp_path: Path) -> None:
    s = load_settings(env={"XDG_RUNTIME_DIR": str(tmp_path)})
    assert (s.engine.size, s.engine.batch, s.engine.steps, s.engine.cond_refresh) == (512, 8, 1, 8)
    assert s.engine.lllite_hooks == "down_blocks"
    assert s.engine.encoder_image_size == 256
    assert s.model.profile == "synthetic-tiny" and s.model.is_synthetic
    assert s.service.api_host == "127.0.0.1" and s.service.bus_transport == "ipc"
    assert s.service.runtime_dir == tmp_path / "stylecast"
    assert s.streams == []


def test_runtime_dir_falls_back_to_tmp_without_xdg() -> None:
    assert str(default_runtime_dir({})).startswith("/tmp/stylecast-")
    assert default_runtime_dir({"XDG_RUNTIME_DIR": "/does/not/exist"}).parent == Path("/tmp")


def test_precedence_yaml_then_env_then_overrides(tmp_path: Path, clip: Path) -> None:
    cfg = write_yaml(
        tmp_path,
        f"""
engine: {{batch: 4, steps: 2, size: 256}}
streams:
  - name: cam
    source: {clip}
    prompt: from yaml
""",
    )
    env = {"STYLECAST_ENGINE__BATCH": "12", "STYLECAST_ENGINE__SIZE": "384", "STYLECAST_STREAMS__0__PROMPT": "from env"}
    s = load_settings(cfg, env=env, overrides={"engine.batch": 16, "streams.0.prompt": "from cli"})
    assert s.engine.batch == 16  # override beats env beats yaml
    assert s.engine.size == 384  # env beats yaml
    assert s.engine.steps == 2  # yaml beats default
    assert s.engine.seed == 0  # default
    assert s.streams[0].prompt == "from cli"
    assert load_settings(cfg, env=env).streams[0].prompt == "from env"


def test_env_json_for_lists_and_config_path_variable(tmp_path: Path, clip: Path) -> None:
    cfg = write_yaml(tmp_path, "engine: {steps: 3}\n")
    streams = json.dumps([{"name": "a", "source": str(clip), "prompt": "p"}, {"name": "b", "source": "/dev/video0", "prompt": "q"}])
    env = {"STYLECAST_CONFIG": str(cfg), "STYLECAST_STREAMS": streams, "STYLECAST_RUN_ID": "not-a-setting"}
    s = load_settings(env=env)
    assert s.engine.steps == 3
    assert [x.name for x in s.streams] == ["a", "b"]
    assert s.streams[1].kind is SourceKind.WEBCAM and s.streams[1].live is True


def test_env_strings_are_coerced_and_empty_clears_optional() -> None:
    s = load_settings(
        env={"STYLECAST_STREAMS": "[]", "STYLECAST_SERVICE__ALLOW_REMOTE_WITHOUT_TOKEN": "true", "STYLECAST_MODEL__TAESD_PATH": ""}
    )
    assert s.service.allow_remote_without_token is True and s.model.taesd_path is None


def test_empty_yaml_is_all_defaults(tmp_path: Path) -> None:
    assert load_settings(write_yaml(tmp_path, ""), env={}).engine.batch == 8


# ---- errors: one readable line naming the field and the value ----------------------------------------


def test_size_error_names_field_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write_yaml(tmp_path, "engine:\n  size: 500\n"), env={})
    assert problems(exc) == ["engine.size: 500 is not a multiple of 64"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"engine.batch": 0}, "engine.batch: got 0: input should be greater than or equal to 1"),
        ({"engine.steps": 9}, "engine.steps: got 9: input should be less than or equal to 8"),
        ({"engine.size": 1088}, "engine.size: 1088 is outside 64..1024"),
        ({"engine.lllite_hooks": "some"}, "engine.lllite_hooks: got 'some': input should be 'none', 'down_blocks', 'mid_block', 'up_blocks' or 'all'"),
        ({"engine.bacth": 3}, "engine.bacth: unknown field (did you mean 'batch'?)"),
        ({"engine.cond_refresh": 0}, "engine.cond_refresh: got 0: input should be greater than or equal to 1"),
        ({"model.device": "gpu0"}, "model.device: 'gpu0' is not a device: use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ({"model.profile": "synthetic_tiny"}, "model.profile: 'synthetic_tiny' is neither 'synthetic-tiny', 'synthetic-full' nor an existing checkpoint directory"),
        ({"engine.buckets": [1, 16]}, "engine.buckets.1: 16 is outside 1..engine.batch (8)"),
        ({"service.ring_slots": 4}, "service.ring_slots: 4 is smaller than engine.batch (8): a full batch would overwrite its own frames"),
        ({"service.heartbeat_timeout_s": 1.5}, "service.heartbeat_timeout_s: 1.5 must exceed twice heartbeat_interval_s (1.0)"),
        ({"ingest.reconnect_backoff_max_s": 0.1}, "ingest.reconnect_backoff_max_s: 0.1 is smaller than reconnect_backoff_initial_s (0.5)"),
    ],
)
def test_override_errors_are_one_line_with_origin(overrides: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env={}, overrides=overrides)
    (line,) = problems(exc)
    key = next(iter(overrides))
    assert line == f"{expected} (set by override {key})"
    assert "\n" not in line


def test_env_error_names_the_variable() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env={"STYLECAST_ENGINE__SIZE": "100"})
    assert problems(exc) == ["engine.size: 100 is not a multiple of 64 (set by STYLECAST_ENGINE__SIZE)"]


def test_every_problem_is_reported(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path, "engine: {size: 500, batch: 99}\nservice: {api_port: 0}\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg, env={})
    assert [p.split(":")[0] for p in problems(exc)] == ["engine.size", "engine.batch", "service.api_port"]
    assert str(exc.value).count("\n") == 2


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        ({"name": "Cam 1", "source": "/dev/video0", "prompt": "p"}, "streams.0.name: 'Cam 1' is not a valid stream name"),
        ({"name": "cam", "source": "/dev/video0", "prompt": "   "}, "streams.0.prompt: must not be empty"),
        ({"name": "cam", "source": "/dev/video0", "prompt": "x" * 2001}, "streams.0.prompt: got 'xxx"),
        ({"name": "cam", "source": "/dev/video0"}, "streams.0.prompt: required field is missing"),
        ({"name": "cam", "source": "/nope/clip.mp4", "prompt": "p"}, "streams.0.source: '/nope/clip.mp4' does not exist"),
        ({"name": "cam", "source": "http://h/x.m3u8", "prompt": "p"}, "streams.0.source: 'http://h/x.m3u8' has unsupported scheme 'http'"),
        ({"name": "cam", "source": "rtsp://h:99999/x", "prompt": "p"}, "streams.0.source: 'rtsp://h:99999/x' is not a valid rtsp source URL"),
        ({"name": "cam", "source": "rtsp://h/x", "prompt": "p", "live": False}, "streams.0.live: false is not possible for rtsp source"),
        ({"name": "cam", "source": "/dev/video1", "prompt": "p", "pace": True}, "streams.0.pace: true applies to file sources only"),
        ({"name": "cam", "source": "/dev/video1", "prompt": "p", "sinks": [{"type": "mp4", "target": "out.avi"}]}, "streams.0.sinks.0.target: 'out.avi' does not end in .mp4"),
        ({"name": "cam", "source": "/dev/video1", "prompt": "p", "sinks": [{"type": "rtsp"}]}, "streams.0.sinks.0.target: is required for an rtsp sink"),
        ({"name": "cam", "source": "/dev/video1", "prompt": "p", "sinks": [{"type": "webm", "target": "x"}]}, "streams.0.sinks.0.type: got 'webm'"),
    ],
)
def test_stream_errors(stream: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env={}, overrides={"streams": json.dumps([stream])})
    assert problems(exc)[0].startswith(expected), problems(exc)


def test_duplicate_stream_names_and_shared_output_file(tmp_path: Path, clip: Path) -> None:
    out = str(tmp_path / "out.mp4")
    streams = [
        {"name": "a", "source": str(clip), "prompt": "p", "sinks": [{"type": "mp4", "target": out}]},
        {"name": "b", "source": str(clip), "prompt": "p", "sinks": [{"type": "mp4", "target": out}]},
        {"name": "a", "source": str(clip), "prompt": "p"},
    ]
    with pytest.raises(ConfigError) as exc:
        load_settings(env={}, overrides={"streams": json.dumps(streams)})
    assert problems(exc) == ["streams.2.name: 'a' is already used by streams.0 (set by override streams)"]
    with pytest.raises(ConfigError) as exc:
        load_settings(env={}, overrides={"streams": json.dumps(streams[:2])})
    assert problems(exc)[0].startswith("streams.1.sinks.0.target: ") and "already written by streams.0.sinks.0" in problems(exc)[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("engine: [1, 2\n", "invalid YAML at line 2"),
        ("- engine\n", "the top level must be a mapping of sections"),
        ("engine: {batch: 2}\nengine: {batch: 3}\n", "duplicate key 'engine'"),
    ],
)
def test_bad_yaml_files(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings(write_yaml(tmp_path, text), env={})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml: not found"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_bad_env_json_and_bad_override_keys() -> None:
    with pytest.raises(ConfigError, match=r"streams: STYLECAST_STREAMS is not valid JSON"):
        load_settings(env={"STYLECAST_STREAMS": "[{"})
    with pytest.raises(ConfigError, match=r"override key 'engine\.\.batch' is not a dotted field path"):
        load_settings(env={}, overrides={"engine..batch": 1})
    with pytest.raises(ConfigError, match=r"streams\.3: no such item \(0 configured\)"):
        load_settings(env={}, overrides={"streams.3.prompt": "x"})


def test_public_api_host_needs_a_token() -> None:
    with pytest.raises(ConfigError, match=r"service\.api_host: '0\.0\.0\.0' is not a loopback address"):
        load_settings(env={}, overrides={"service.api_host": "0.0.0.0"})
    s = load_settings(env={}, overrides={"service.api_host": "0.0.0.0", "service.token": TOKEN})
    assert s.service.token is not None and s.service.token.get_secret_value() == TOKEN
    with pytest.raises(ConfigError, match=r"^service\.token: too short"):
        load_settings(env={}, overrides={"service.token": "short"})


# ---- streams ----------------------------------------------------------------------------------------


def test_stream_defaults_depend_on_source_kind(clip: Path) -> None:
    f = parse_stream({"name": "f", "source": str(clip), "prompt": "p"})
    assert f.kind is SourceKind.FILE and f.live is False and f.pace is False
    assert f.source.reveal() == str(clip.resolve())
    assert parse_stream({"name": "f", "source": str(clip), "prompt": "p", "live": True, "pace": True}).live is True
    r = parse_stream({"name": "r", "source": CAMERA, "prompt": "p", "seed": 7})
    assert r.kind is SourceKind.RTSP and r.live is True and r.seed == 7
    w = parse_stream({"name": "w", "source": "/dev/video2", "prompt": "p"})
    assert w.kind is SourceKind.WEBCAM and w.live is True


def test_relative_file_paths_become_absolute(tmp_path: Path, clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = parse_stream({"name": "f", "source": "clip.mp4", "prompt": "p", "sinks": [{"type": "hls", "target": "out/live.m3u8"}]})
    assert s.source.reveal() == str(clip.resolve())
    assert s.sinks[0].target.reveal() == str(tmp_path.resolve() / "out" / "live.m3u8")


def test_sinks() -> None:
    ok = [
        SinkSettings(type="rtsp", target="rtsp://u:p@relay:8554/out"),
        SinkSettings(type="mjpeg"),
        SinkSettings(type="mjpeg", target="127.0.0.1:8081"),
    ]
    assert ok[0].target.reveal() == "rtsp://u:p@relay:8554/out" and str(ok[0].target) == "rtsp://***@relay:8554/out"
    assert not ok[1].is_file


def test_sink_encoder_options(tmp_path: Path) -> None:
    out = str(tmp_path / "o.mp4")
    assert SinkSettings(type="mp4", target=out).encoder() == {}  # unset: the sink kind's defaults
    chosen = SinkSettings(type="mp4", target=out, preset="ultrafast", crf=28, encoder_threads=12)
    assert chosen.encoder() == {"preset": "ultrafast", "crf": 28, "threads": 12}
    with pytest.raises(ConfigError) as exc:
        load_settings(env={}, overrides={"streams": [
            {"name": "a", "source": "rtsp://cam/x", "prompt": "p", "sinks": [{"type": "mjpeg", "preset": "ultrafast"}]}]})
    assert any("preset" in p and "mjpeg has no H.264 encoder" in p for p in problems(exc))
    with pytest.raises(ConfigError) as exc:
        load_settings(env={}, overrides={"streams": [
            {"name": "a", "source": "rtsp://cam/x", "prompt": "p", "sinks": [{"type": "mp4", "target": out, "crf": 60}]}]})
    assert any("crf" in p for p in problems(exc))


# ---- secrets never print ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rtsp://user:secret@host/x", "rtsp://***@host/x"),
        ("rtsp://user@host:554/x", "rtsp://***@host:554/x"),
        ("rtsp://host/x", "rtsp://host/x"),
        ("/videos/a@b.mp4", "/videos/a@b.mp4"),
        ("rtsp://u:p@ss:w/rd@cam/live", "rtsp://***@cam/live"),  # unescaped '@' and '/' in a password
        ("cannot open rtsp://a:b@h1/x and rtsps://c:d@h2/y", "cannot open rtsp://***@h1/x and rtsps://***@h2/y"),
        ("http://h/x?token=abc&user=me", "http://h/x?token=***&user=***"),
        ("RTSP://A:B@H/x", "RTSP://***@H/x"),
    ],
)
def test_redact_url(text: str, expected: str) -> None:
    assert redact_url(text) == expected


def test_reprs_dumps_and_errors_hide_credentials(tmp_path: Path) -> None:
    s = load_settings(
        env={"STYLECAST_SERVICE__TOKEN": TOKEN},
        overrides={"streams": json.dumps([{"name": "cam", "source": CAMERA, "prompt": "p", "sinks": [{"type": "rtsp", "target": CAMERA}]}])},
    )
    stream = s.streams[0]
    printed = [repr(s), str(s), s.model_dump_json(), json.dumps(s.model_dump(mode="json")), repr(stream), f"{stream.source}", str(s.model_dump())]
    for text in printed:
        assert PASSWORD not in text and TOKEN not in text
        assert "10.0.0.5" in text  # the host stays visible: operators need it
    assert stream.source.reveal() == CAMERA
    # A bad value containing credentials is redacted in the error too.
    with pytest.raises(ConfigError) as exc:
        load_settings(env={}, overrides={"streams": json.dumps([{"name": "cam", "source": f"rtsp://admin:{PASSWORD}@h:99999/x", "prompt": "p"}])})
    assert PASSWORD not in str(exc.value) and "rtsp://***@h:99999/x" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_settings(env={}, overrides={"service.token": 12345678901234567890})
    assert "12345678901234567890" not in str(exc.value) and "***" in str(exc.value)


def test_json_round_trip_reveals_only_when_asked() -> None:
    s = load_settings(
        env={"STYLECAST_SERVICE__TOKEN": TOKEN},
        overrides={"streams": json.dumps([{"name": "cam", "source": CAMERA, "prompt": "p"}])},
    )
    assert PASSWORD not in settings_to_json(s) and TOKEN not in settings_to_json(s)
    child = settings_from_json(settings_to_json(s, reveal_secrets=True))
    assert child.streams[0].source.reveal() == CAMERA
    assert child.service.token.get_secret_value() == TOKEN
    assert child == s


def test_secret_url_behaves_like_a_value() -> None:
    a, b = SecretUrl(CAMERA), SecretUrl(CAMERA)
    assert a == b and hash(a) == hash(b) and a != SecretUrl("rtsp://h/x")
    assert PASSWORD not in repr(a) and PASSWORD not in f"{a}"
    with pytest.raises(TypeError):
        SecretUrl(5)  # type: ignore[arg-type]


# ---- documentation ----------------------------------------------------------------------------------


def _models(model: type[BaseModel], seen: set[type]) -> None:
    seen.add(model)
    for field in model.model_fields.values():
        for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel) and candidate not in seen:
                _models(candidate, seen)


def test_every_field_is_documented() -> None:
    seen: set[type] = set()
    _models(Settings, seen)
    assert {StreamSettings, SinkSettings, EngineSettings} <= seen
    undocumented = [f"{m.__name__}.{n}" for m in seen for n, f in m.model_fields.items() if not f.description]
    assert undocumented == []


def test_reference_lists_fields_with_env_names() -> None:
    text = settings_reference()
    assert "`engine.batch`" in text and "`STYLECAST_ENGINE__BATCH`" in text
    assert "`STYLECAST_STREAMS__N__PROMPT`" in text


def test_misencoded_password_is_not_leaked_by_url_parsing() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_stream({"name": "cam", "source": "rtsp://admin:top/secret@cam:554/x", "prompt": "p"})
    assert "top" not in str(exc.value) and "secret" not in str(exc.value)
    assert "percent-encode" in str(exc.value)


@pytest.mark.parametrize("field, value, default, bad", [
    ("group_norm", "two_pass", "auto", "welford"),
    ("cross_attention", "key_channel", "bias", "sparse"),
])
def test_the_u_net_choices_reach_the_engine(field, value, default, bad):
    from services.gpu.worker import engine_config

    settings = load_settings(None, overrides={"model": {field: value}})
    assert getattr(engine_config(settings, cuda=False), field) == value
    assert getattr(engine_config(load_settings(None), cuda=False), field) == default
    with pytest.raises(Exception, match=field):
        load_settings(None, overrides={"model": {field: bad}})
