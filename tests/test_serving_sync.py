"""serving-sync (the TF Serving sidecar's mirror) and `medkfp serve` running tensorflow_model_server.

The mirror is checked file by file, its labels against a server's view of what is loaded,
and end to end with a real gRPC server reading it. tensorflow_model_server is not
installable here: a stand-in on PATH records the command line it was given and serves the
mirror with the built-in server, so everything up to the binary is the real code path.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from serving_helpers import CLASSES, export_model, png, wait_for

from medkfp import vocab
from medkfp.cli import main
from medkfp.model_repository import ModelRepository, sha256_file
from medkfp.s3server import free_port
from medkfp.serving import client
from medkfp.serving.server import ServeError, start_server
from medkfp.serving.sync import MirrorStore, ServingSync, parse_config
from medkfp.serving.tfserving import TF_SERVING, choose_engine, serve_with_tfserving, tfserving_command
from medkfp.store import LocalStore, open_store

IMAGE = png("RGB", 16, 16, 0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two exports that answer differently: class a, class b."""
    tmp = tmp_path_factory.mktemp("exports")
    return [export_model(tmp / "a", favour=0), export_model(tmp / "b", favour=1)]


def publish(store, saved_model) -> int:
    return ModelRepository(store).publish("m", saved_model, {"class_names": CLASSES}, keep=None)


def local_config(mirror: Path) -> tuple[list[int], dict[str, int], str]:
    """(versions, labels, base_path) of model m in the mirror's models.config."""
    [entry] = parse_config((mirror / vocab.MODELS_CONFIG).read_text()).model_config_list.config
    return list(entry.model_version_policy.specific.versions), dict(entry.version_labels), entry.base_path


def version_dirs(mirror: Path) -> list[str]:
    return sorted(p.name for p in (mirror / "m").iterdir())


@pytest.mark.parametrize("store_kind", ["local", "s3"])
def test_sync_mirrors_the_config_and_verified_versions(store_kind, request, tmp_path, models):
    if store_kind == "s3":
        request.getfixturevalue("s3_env")
    store = open_store("s3://sync-test" if store_kind == "s3" else str(tmp_path / "store"))
    for saved_model in models:
        publish(store, saved_model)
    mirror = tmp_path / "mirror"

    report = ServingSync(store, mirror).sync_once()

    assert report.downloaded == ["m/1", "m/2"] and report.config_written and not report.errors
    assert local_config(mirror) == ([1, 2], {vocab.STABLE_LABEL: 2}, str(mirror / "m"))
    for version in (1, 2):
        metadata = json.loads((mirror / "m" / str(version) / vocab.METADATA_FILE).read_text())
        for relative, digest in metadata["files"].items():
            assert sha256_file(mirror / "m" / str(version) / relative) == digest
    assert sorted(p.name for p in mirror.iterdir()) == ["m", vocab.MODELS_CONFIG]
    assert not ServingSync(store, mirror).sync_once().changed


def test_sync_removes_versions_the_config_drops(tmp_path, models):
    store = LocalStore(tmp_path / "store")
    for saved_model in models:
        publish(store, saved_model)
    mirror = tmp_path / "mirror"
    sync = ServingSync(store, mirror)
    sync.sync_once()
    publish(store, models[0])

    report = sync.sync_once()

    assert report.downloaded == ["m/3"] and report.removed == ["m/1"]
    assert version_dirs(mirror) == ["2", "3"]
    assert local_config(mirror)[:2] == ([2, 3], {vocab.STABLE_LABEL: 3})


def test_a_corrupt_version_never_enters_the_mirror(tmp_path, models):
    store = LocalStore(tmp_path / "store")
    publish(store, models[0])
    mirror = tmp_path / "mirror"
    sync = ServingSync(store, mirror)
    sync.sync_once()
    publish(store, models[1])
    store.put_bytes("models/m/2/saved_model.pb", b"bit rot")

    report = sync.sync_once()

    assert report.errors == [
        "model m version 2: downloaded saved_model.pb of model m version 2 does not match its "
        "sha256: publish it again"
    ]
    assert report.pending == {"m:stable": 2}
    assert local_config(mirror)[:2] == ([1], {vocab.STABLE_LABEL: 1})
    assert version_dirs(mirror) == ["1"]
    assert not (mirror / ".staging").exists()


class FakeServer(ServingSync):
    """A sync whose server view (versions AVAILABLE per model, None: unreachable) is set by the test."""

    available: dict[str, set[int]] | None = None

    def available_versions(self, config):
        return self.available


def test_labels_move_only_once_the_server_has_loaded_the_version(tmp_path, models):
    store = LocalStore(tmp_path / "store")
    publish(store, models[0])
    mirror = tmp_path / "mirror"
    sync = FakeServer(store, mirror, server="fake:8500")

    sync.sync_once()  # cold start, server not up: it reads this as its first config
    assert local_config(mirror)[:2] == ([1], {"stable": 1})

    publish(store, models[1])
    sync.available = {"m": {1}}
    assert sync.sync_once().pending == {"m:stable": 2}
    assert local_config(mirror)[:2] == ([1, 2], {"stable": 1})  # 2 loads; stable stays on 1
    sync.available = None  # unreachable: nothing moves either
    assert sync.sync_once().pending == {"m:stable": 2}
    assert local_config(mirror)[:2] == ([1, 2], {"stable": 1})

    sync.available = {"m": {1, 2}}
    report = sync.sync_once()
    assert report.pending == {} and report.config_written
    assert local_config(mirror)[:2] == ([1, 2], {"stable": 2})

    publish(store, models[0])  # v3: the store now wants [2, 3]
    report = sync.sync_once()
    assert local_config(mirror)[:2] == ([2, 3], {"stable": 2})
    assert report.removed == [] and version_dirs(mirror) == ["1", "2", "3"]  # 1 is still loaded
    sync.available = {"m": {2, 3}}
    report = sync.sync_once()
    assert report.removed == ["m/1"]
    assert local_config(mirror)[:2] == ([2, 3], {"stable": 3})


def test_sync_then_a_real_server_on_the_mirror_moves_the_label_after_loading(tmp_path, models):
    store = LocalStore(tmp_path / "store")
    publish(store, models[0])
    mirror = tmp_path / "mirror"
    ServingSync(store, mirror).sync_once()
    with start_server(MirrorStore(mirror), port=0, poll_interval=0.1, cache_dir=tmp_path / "cache") as server:
        address = f"127.0.0.1:{server.port}"
        sync = ServingSync(store, mirror, server=address)
        assert client.predict(address, "m", [IMAGE], label="stable")["predictions"][0]["class"] == "a"
        publish(store, models[1])

        assert sync.sync_once().pending == {"m:stable": 2}
        wait_for(lambda: {s["version"] for s in client.model_status(address, "m")} == {1, 2}, what="loaded")
        wait_for(lambda: not sync.sync_once().pending, what="label moved")

        wait_for(lambda: client.predict(address, "m", [IMAGE], label="stable")["version"] == 2, what="moved")
        assert client.predict(address, "m", [IMAGE], label="stable")["predictions"][0]["class"] == "b"


def test_serving_sync_command_one_pass(tmp_path, models, capsys):
    store = tmp_path / "store"
    publish(LocalStore(store), models[0])
    capsys.readouterr()

    assert main(["serving-sync", "--store", str(store), "--dir", str(tmp_path / "mirror"), "--once"]) == 0

    report = json.loads(capsys.readouterr().out)
    assert report["downloaded"] == ["m/1"] and report["config_written"] is True
    assert (tmp_path / "mirror" / "m" / "1" / "saved_model.pb").is_file()


# --- tensorflow_model_server --------------------------------------------------------------------


def test_tfserving_command_line():
    assert tfserving_command("/usr/bin/tensorflow_model_server", "/models/models.config", 8500, 5.0) == [
        "/usr/bin/tensorflow_model_server",
        "--port=8500",
        "--model_config_file=/models/models.config",
        "--model_config_file_poll_wait_seconds=5",
        "--file_system_poll_wait_seconds=1",
        "--allow_version_labels_for_unavailable_models=true",
    ]
    assert "--model_config_file_poll_wait_seconds=1" in tfserving_command("t", "c", 1, 0.2)


def fake_tfserving(folder: Path, args_file: Path) -> Path:
    """A `tensorflow_model_server` stand-in: records its argv, then serves the mirror its
    --model_config_file sits in with the built-in server, on its --port."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / vocab.TF_SERVING_BINARY
    script.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        from pathlib import Path
        Path({str(args_file)!r}).write_text(json.dumps(sys.argv[1:]))
        flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
        os.execv(sys.executable, [
            sys.executable, "-m", "medkfp.cli", "serve", "--engine", "builtin", "--host", "127.0.0.1",
            "--port", flags["port"], "--poll", flags["model_config_file_poll_wait_seconds"],
            "--model-dir", str(Path(flags["model_config_file"]).parent),
        ])
    """)
    )
    script.chmod(0o755)
    return script


def test_builtin_serves_a_store_or_a_mirror_not_both(tmp_path, capsys):
    status = main(["serve", "--engine", "builtin", "--store", str(tmp_path), "--model-dir", str(tmp_path)])

    assert status == 2
    assert "serves --store or a --model-dir mirror, not both" in capsys.readouterr().err


def test_engine_choice_follows_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert choose_engine("auto") == "builtin"
    with pytest.raises(ServeError, match="tensorflow_model_server is not on PATH: install TensorFlow"):
        choose_engine("tensorflow-serving")
    fake_tfserving(tmp_path / "bin", tmp_path / "args.json")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert choose_engine("auto") == TF_SERVING
    assert choose_engine("builtin") == "builtin"


def test_serve_runs_tensorflow_model_server_over_the_synced_mirror(tmp_path, models, monkeypatch, caplog):
    caplog.set_level("INFO", logger="medkfp.serving.tfserving")
    store, mirror, args_file = tmp_path / "store", tmp_path / "mirror", tmp_path / "args.json"
    publish(LocalStore(store), models[0])
    binary = fake_tfserving(tmp_path / "bin", args_file)
    monkeypatch.setenv("PATH", f"{binary.parent}{os.pathsep}{os.environ['PATH']}")
    port = free_port()
    address = f"127.0.0.1:{port}"
    ready, stop = threading.Event(), threading.Event()
    supervisor = threading.Thread(
        target=serve_with_tfserving,
        kwargs=dict(
            store_uri=str(store),
            model_dir=mirror,
            port=port,
            poll_interval=0.5,
            ready_event=ready,
            stop_event=stop,
        ),
    )
    supervisor.start()
    try:
        assert ready.wait(30)
        wait_for(lambda: serving(address), timeout=90, what="TF Serving stand-in up")
        assert (
            json.loads(args_file.read_text())
            == tfserving_command(str(binary), mirror / vocab.MODELS_CONFIG, port, 0.5)[1:]
        )
        assert client.predict(address, "m", [IMAGE], label="stable")["predictions"][0]["class"] == "a"

        publish(LocalStore(store), models[1])
        wait_for(
            lambda: client.predict(address, "m", [IMAGE], label="stable")["version"] == 2,
            timeout=60,
            what="stable moved to v2",
        )
        assert client.predict(address, "m", [IMAGE])["predictions"][0]["class"] == "b"
        assert local_config(mirror)[:2] == ([1, 2], {"stable": 2})
    finally:
        stop.set()
        supervisor.join(30)
    assert not supervisor.is_alive()
    assert f"starting {binary} --port={port}" in caplog.text
    assert "'pending_labels': {'m:stable': 2}" in caplog.text  # the label waited for the load
    with pytest.raises(client.ServingError):
        client.model_status(address, "m", timeout=2, retries=0)  # the binary was stopped too


def serving(address: str) -> bool:
    try:
        return bool(client.model_status(address, "m", timeout=2, retries=0))
    except client.ServingError:
        return False
