"""`ft-dist train` without an address starts exactly one new local Ray cluster (never the
one `ray start` left on this machine) and says which; with one it joins it and says so.

Ray is not started here: ray.init is replaced by a recorder. Measured by hand with a
second Ray instance running on the machine: before, Ray Train's PlacementGroupCleaner
printed a "Found multiple active Ray instances" traceback; after, no traceback.
"""

from __future__ import annotations

import ray

from ft_dist.train import worker


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def init(self, **kwargs):
        self.calls.append(kwargs)
        return type("Context", (), {"dashboard_url": f"127.0.0.1:{kwargs.get('dashboard_port')}"})

    def runtime_context(self):
        return type("RuntimeContext", (), {"gcs_address": "192.0.2.9:6379"})


def _record(monkeypatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", recorder.init)
    monkeypatch.setattr(ray, "get_runtime_context", recorder.runtime_context)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return recorder


def test_no_address_starts_a_new_local_cluster_whose_state_api_every_process_finds(
    monkeypatch, capsys
) -> None:
    recorder = _record(monkeypatch)
    worker.connect(None)
    [call] = recorder.calls
    assert call["address"] == "local"  # never the last `ray start` cluster
    port = call["dashboard_port"]
    api_server = call["runtime_env"]["env_vars"]["RAY_API_SERVER_ADDRESS"]
    assert api_server == f"http://127.0.0.1:{port}" and call["dashboard_host"] == "127.0.0.1"
    assert capsys.readouterr().err == (
        f"ft-dist: started a local Ray cluster (GCS 192.0.2.9:6379, dashboard 127.0.0.1:{port}); "
        "set ray.address or RAY_ADDRESS to join another one instead\n"
    )


def test_an_address_is_joined_and_named(monkeypatch, capsys) -> None:
    recorder = _record(monkeypatch)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    worker.connect(None)
    assert recorder.calls == [{"address": "10.0.0.5:6379", "log_to_driver": True}]
    assert capsys.readouterr().err == "ft-dist: joined the Ray cluster at 10.0.0.5:6379\n"
