"""The real Triton server (the nvidia-pytriton wheel's, from the serving environment) on 127.0.0.1, ephemeral
ports, one server for the module, always stopped: the bundled sr teacher, defended (tap placement; subgraph and
plugin mode), served by the python form, against the same models run in-process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from asvp import api
from asvp.cli import main
from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.runtime.engines.sessions import create_session
from asvp.runtime.serving.client import RemoteOptions, ServerRefused, ServerUnreachable, TritonRunner
from asvp.runtime.serving.repository import RepoOptions, write_repository
from asvp.runtime.serving.server import ServerOptions, TritonServer, free_port

TAP = AsvpConfig(placement="tap")
KEY = "serving-test-key-0123456789"
QUEUE_DELAY_US = 50_000  # long enough that concurrent requests meet in the batcher on a busy 2-core machine


@pytest.fixture(scope="module")
def models(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("served-models")
    clean = exported("sr")
    sub = api.defend(clean, root / "sr-tap.onnx", config=TAP).path
    plug = api.defend(clean, root / "sr-plugin.onnx", config=TAP, mode="plugin").path
    marked = api.fingerprint_mark(clean, root / "sr-marked.onnx", KEY, strength_db=40.0).path
    return {"clean": str(clean), "sr": str(sub), "sr_plugin": str(plug), "marked": str(marked)}


@pytest.fixture(scope="module")
def server(serving_env, models, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    for name in ("sr", "sr_plugin", "marked", "clean"):
        write_repository(models[name], repo, RepoOptions(name=name, form="python", max_side=64,
                                                         max_queue_delay_us=QUEUE_DELAY_US))
    # the attacker's test also sends the held-out images, larger than max_side: the same model without the limit
    write_repository(models["sr"], repo, RepoOptions(name="sr_open", form="python"))
    with TritonServer(ServerOptions(str(repo), env=str(serving_env.path))) as srv:
        yield srv
    assert not srv.running


def _x(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.mark.parametrize("name", ["sr", "sr_plugin"])
def test_served_outputs_equal_in_process_with_taps(server, models, name):
    sess = create_session(models[name])
    names = [o.name for o in sess.get_outputs()]
    assert any(n.startswith("asvp_tap") for n in names)
    x = _x((2, 3, 16, 20))
    ref = dict(zip(names, sess.run(names, {"input": x})))
    for url in (server.http_url, "grpc://" + server.grpc_url):
        with TritonRunner(RemoteOptions(url, name)) as runner:
            got = runner.infer({"input": x})
        assert sorted(got) == sorted(names)  # every output served, the tap included
        for n in names:
            assert got[n].shape == ref[n].shape and np.array_equal(got[n], ref[n]), n


def test_validate_url_passes_bit_identical(server, models, capsys):
    rc = main(["validate", models["sr"], "--url", server.http_url, "--model", "sr", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["passed"]
    assert {o["name"] for o in doc["outputs"]} == {"output", "asvp_tap_0"}
    assert all(o["identical"] for o in doc["outputs"])
    assert doc["digest_served"] == doc["digest_model"] is not None


def test_validate_url_flags_another_model(server, models, capsys):
    """The clean model against the served defended one: the record of the defence differs -> exit 1."""
    rc = main(["validate", models["clean"], "--url", server.http_url, "--model", "sr"])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL" in out and "records defence" in out


def test_concurrent_requests_are_batched(server):
    with TritonRunner(RemoteOptions(server.http_url, "sr")) as runner:
        before = runner.statistics()
        x = _x((1, 3, 16, 16))

        errors = []

        def work():
            try:
                for _ in range(4):
                    runner.infer({"input": x})
            except Exception as exc:  # a thread's failure must fail the test
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for _ in range(100):  # the server counts a request just after its response has gone out
            after = runner.statistics()
            if after["inference_count"] - before["inference_count"] >= 64:
                break
            time.sleep(0.05)
    requests = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert requests == 64
    assert executions < requests, "the dynamic batcher merged no requests"
    assert max(int(b["batch_size"]) for b in after["batch_stats"]) > 1


@pytest.mark.parametrize("bad", [
    {"datatype": "FP64", "shape": [1, 3, 4, 4]},     # wrong dtype
    {"datatype": "FP32", "shape": [1, 4, 4]},        # wrong rank
    {"datatype": "FP32", "shape": [1, 2, 4, 4]},     # wrong channel count
    {"datatype": "FP32", "shape": [1, 3, 0, 4]},     # a zero-size dimension
    {"datatype": "FP32", "shape": [1, 3, 65, 4]},    # above the repository's max side (64)
])
def test_bad_request_gets_4xx_and_the_next_succeeds(server, bad):
    n = int(np.prod(bad["shape"]))
    body = {"inputs": [{"name": "input", "shape": bad["shape"], "datatype": bad["datatype"], "data": [0.5] * n}]}
    req = urllib.request.Request(f"http://{server.http_url}/v2/models/sr/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    assert 400 <= e.value.code < 500, e.value.code
    with TritonRunner(RemoteOptions(server.http_url, "sr")) as runner:
        assert runner.infer({"input": _x((1, 3, 8, 8))})["output"].shape == (1, 3, 16, 16)


def test_profile_url_measures_each_concurrency(server, capsys):
    rc = main(["profile", "--url", server.http_url, "--model", "sr", "--concurrency", "1,4", "--iters", "3",
               "--warmup", "1", "--shape", "1x3x16x16", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and [lv["concurrency"] for lv in doc["levels"]] == [1, 4]
    for lv in doc["levels"]:
        assert lv["requests"] == 3 * lv["concurrency"] and lv["errors"] == 0
        assert 0 < lv["p50_ms"] <= lv["p90_ms"] <= lv["p99_ms"] and lv["throughput_rps"] > 0
        assert lv["inferences"] == 4 * lv["concurrency"]  # warm-up included: the server saw every request


def test_runner_errors_are_one_line(server):
    with TritonRunner(RemoteOptions(server.http_url, "sr")) as runner:
        with pytest.raises(ServerRefused) as e:
            runner.infer({"input": _x((1, 3, 8, 8)).astype(np.float64)})
    assert e.value.exit_code == 2 and "\n" not in str(e.value) and "FP64" in str(e.value)
    with pytest.raises(AsvpError) as e:
        TritonRunner(RemoteOptions(server.http_url, "nosuch")).activate()
    assert e.value.exit_code == 2


def test_unreachable_server_exit_3(models, capsys):
    from asvp.runtime.serving.server import free_port

    url = f"127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnreachable) as e:
        TritonRunner(RemoteOptions(url, "sr", retries=1, backoff=0.05)).activate()
    assert e.value.exit_code == 3
    assert main(["validate", models["sr"], "--url", url, "--model", "sr", "--retries", "0"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unreachable" in err


def test_corrupt_model_fails_to_load_in_one_line(serving_env, models, tmp_path):
    write_repository(models["sr"], tmp_path, RepoOptions(name="broken", form="python"))
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    srv = TritonServer(ServerOptions(str(tmp_path), env=str(serving_env.path)))
    with pytest.raises(AsvpError) as e:
        srv.start()
    msg = str(e.value)
    assert "failed to load 'broken'" in msg and "\n" not in msg
    assert srv.proc is None and not srv.running


def test_asvp_serve_cli_prints_endpoints_and_stops_on_sigterm(serving_env, models, tmp_path):
    """`asvp serve` as a user runs it: endpoints printed once ready; SIGTERM stops it and its process group."""
    write_repository(models["sr"], tmp_path, RepoOptions(name="sr", form="python"))
    env = dict(os.environ, ASVP_SERVE_ENV=str(serving_env.path))
    proc = subprocess.Popen([sys.executable, "-m", "asvp.cli", "serve", str(tmp_path), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        info = json.loads(proc.stdout.readline())
        with TritonRunner(RemoteOptions(info["http"], "sr")) as runner:
            assert runner.infer({"input": _x((1, 3, 8, 8))})["output"].shape == (1, 3, 16, 16)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "server stopped" in out
    with pytest.raises(ProcessLookupError):
        os.killpg(info["pid"], 0)  # no server, no backend stub left in its group


@pytest.mark.parametrize("name,flagged", [("marked", True), ("clean", False)])
def test_fingerprint_verify_url(server, models, capsys, name, flagged):
    """A served marked model passes its key check and is flagged; a served clean model is not flagged."""
    rc = main(["fingerprint", "verify", "--url", server.http_url, "--model", name, "--clean", models["clean"],
               "--defended", models["marked"], "--key", KEY, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["flagged"] is flagged, doc
    assert doc["key_check"] > 0.99 and name in doc["suspect"]


@pytest.mark.parametrize("kind", ["output", "feature"])
def test_attack_over_the_network_equals_the_in_process_attack(server, models, tmp_path, kind):
    """asvp attack --url: the defended model's answers (and tap features, for a feature rung) come from the server,
    which counts every query, and the attack's result equals the same attack on the defended file in-process (the
    python form serves bit-identical answers)."""
    remote = RemoteOptions(server.http_url, "sr_open")
    run = dict(clean=models["clean"], defended=models["sr"], kind=kind, steps=12, pool=16, progress=False)
    with TritonRunner(remote) as runner:
        before = runner.statistics()["inference_count"]
        served = api.attack("sr", remote=remote, **run)
        queried = runner.statistics()["inference_count"] - before
    local = api.attack("sr", **run)
    row, ref = served.tasks[0], local.tasks[0]
    assert queried >= 16  # every query crop went over the network, besides the held-out images
    assert row["models"]["defended_served_at"] == f"sr_open@{server.http_url}"
    assert ref["models"]["defended_served_at"] is None
    for key in ("teacher", "students", "drops", "answers_identical"):
        assert row[key] == ref[key], key


def test_attack_over_the_network_refuses_what_a_server_cannot_answer(server, models):
    remote = RemoteOptions(server.http_url, "sr_open")
    with pytest.raises(AsvpError, match="--url needs --task, --clean and --defended"):
        api.attack("sr", remote=remote, kind="output", steps=12, pool=16, progress=False)
    with pytest.raises(AsvpError, match="ladder runs in-process only"):
        api.attack("sr", clean=models["clean"], defended=models["sr"], remote=remote, kind="ladder", progress=False)
    nobody = RemoteOptions(f"127.0.0.1:{free_port()}", "sr_open", retries=0)
    with pytest.raises(ServerUnreachable):  # exit 3 at the command line
        api.attack("sr", clean=models["clean"], defended=models["sr"], remote=nobody, steps=12, pool=16,
                   progress=False)
