"""The Ray dashboard of a sweep, reached over its HTTP API as a user would: with Ray's auth token as
Ray documents it (``Authorization: Bearer``, ``X-Ray-Authorization``, or the sign-in cookie),
refused without it (401) or with a wrong one (403), and showing each trial by its Tune trial id.

Hermetic: every Ray here runs in a subprocess with its own ``HOME``, so the local ``ray.init``
generates its token in ``<tmp>/home/.ray/auth_token`` (Ray 2.60 writes a missing token only there;
``RAY_AUTH_TOKEN_PATH`` is read, never written: ``ray.init`` refuses a path to no file) and the
real ``~/.ray`` is never read or written. The pytest process itself never starts Ray: ``ray.init``
sets ``RAY_AUTH_MODE`` and caches the token in-process, which would leak into other tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, sweep_env

pytestmark = pytest.mark.slow

LINE = re.compile(r"^\[lorasweep\] Ray dashboard: (http://\S+) ", re.M)
WRONG = "0" * 64


@pytest.fixture
def private(tmp_path):
    """``(home, ray_tmp)``: a HOME of its own, and a Ray temp dir of its own (its session's logs are
    this Ray's, whatever else runs on the machine). The latter is short: Ray's socket paths under it
    must stay within the 107 bytes of a Unix socket path, which tmp_path's would not."""
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rd", dir="/tmp"))
    yield home, ray_tmp
    shutil.rmtree(ray_tmp, ignore_errors=True)


def _env(home: Path, ray_tmp: Path, **extra) -> dict:
    """A subprocess's environment with its own HOME (its own Ray token) and Ray temp dir, and the
    caches of this one: the smoke assets (built by tiny_assets under the real home), the HF cache."""
    real_home = Path.home()
    env = sweep_env(HOME=str(home), RAY_TMPDIR=str(ray_tmp),
                    LORASWEEP_CACHE=os.environ.get("LORASWEEP_CACHE") or str(real_home / ".cache" / "lorasweep"),
                    HF_HOME=os.environ.get("HF_HOME") or str(real_home / ".cache" / "huggingface"), **extra)
    # Ray's default path to the token and its default mode (on, for a local ray.init), and a
    # Ray of its own: none of the caller's.
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS",
                "RAY_API_SERVER_ADDRESS", "RAY_OVERRIDE_DASHBOARD_URL"):
        env.pop(var, None)
    return env


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _state(base: str, token: str, resource: str) -> list[dict]:
    """Ray's state API, the one the dashboard's Actors and Tasks pages read."""
    status, body = _get(f"{base}/api/v0/{resource}?detail=1&limit=10000", _bearer(token))
    assert status == 200, (resource, status, body[:300])
    return json.loads(body)["data"]["result"]["result"]


def _check_auth(base: str, token: str) -> None:
    """Each way Ray documents to send the token works; no token is 401, a wrong one 403; the public
    endpoint the sign-in page reads says token mode."""
    for path in ("/api/v0/actors", "/api/jobs/", "/nodes?view=summary"):
        assert _get(base + path, _bearer(token))[0] == 200, path
        assert _get(base + path, {"X-Ray-Authorization": f"Bearer {token}"})[0] == 200, path
        assert _get(base + path, {"Cookie": f"ray-authentication-token={token}"})[0] == 200, path
        assert _get(base + path)[0] == 401, path
        assert _get(base + path, _bearer(WRONG))[0] == 403, path
    status, body = _get(base + "/api/authentication_mode")
    assert status == 200 and json.loads(body) == {"authentication_mode": "token"}


def _wait_for(what: str, fn, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout
    while True:
        value = fn()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first (rc {proc.returncode}):\n"
                                 f"{log.read_text()[-4000:] if log else ''}")
        if time.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s\n{log.read_text()[-4000:] if log else ''}")
        time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # the driver shuts its Ray down (and Ray's reaper does if it cannot)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# ----------------------------------------------------------------------------- on a plain Ray actor

PLAIN = r"""
import json, os, socket, sys
import ray
from lorasweep import dashboard

before = {"url": dashboard.url(), "mark": dashboard.mark_trial("nope"), "line": dashboard.line(None)}
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
ray.init(address="local", dashboard_host="127.0.0.1", dashboard_port=port, include_dashboard=None,
         num_cpus=1, log_to_driver=True)

@ray.remote(num_cpus=0)
class Trial:  # stands in for Tune's trial actor: a plain actor, reused for two trials
    def mark(self, trial_id=None):
        name = dashboard.mark_trial(trial_id)
        print(f"training {trial_id}", flush=True)
        return name

    def who(self):
        return ray.get_runtime_context().get_actor_id(), os.getpid()

a = Trial.remote()
marks = ray.get([a.mark.remote("aaa"), a.mark.remote("aaa"), a.mark.remote("bbb"), a.mark.remote()])
actor_id, pid = ray.get(a.who.remote())
print("RESULT " + json.dumps({
    "before": before, "url": dashboard.url(), "line": dashboard.line(None), "cluster_line": dashboard.line("auto"),
    "auth": dashboard.auth_enabled(), "driver_mark": dashboard.mark_trial("ccc"), "marks": marks,
    "actor_id": actor_id, "pid": pid}), flush=True)
sys.stdin.readline()  # the test reads the dashboard meanwhile
ray.shutdown()
"""


def test_mark_trial_names_each_trial_of_a_reused_actor_on_the_dashboard(tmp_path, private):
    home, ray_tmp = private
    log = tmp_path / "plain.log"
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", PLAIN], cwd=ROOT, env=_env(home, ray_tmp), stdin=subprocess.PIPE,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        found = _wait_for("the script's result", lambda: re.search(r"^RESULT (.*)$", log.read_text(), re.M),
                          120, proc, log)
        r = json.loads(found.group(1))
        # No Ray yet: nothing to show, nothing raised.
        assert r["before"] == {"url": None, "mark": None, "line": "Ray dashboard: none (this Ray runs without one)"}
        token_file = home / ".ray" / "auth_token"
        token = token_file.read_text().strip()
        assert len(token) >= 32
        # Where to find the token is printed, never the token itself; auth is on.
        assert f"token in {token_file}," in log.read_text() and token not in log.read_text()
        assert r["auth"] is True
        base = r["url"]
        port = int(base.rsplit(":", 1)[1])
        assert base == f"http://127.0.0.1:{port}"
        assert r["line"] == (f"Ray dashboard: {base} (token auth on: sign in with the token in "
                             f"{token_file}, which `ray get-auth-token` prints)")
        assert r["cluster_line"].startswith(f"Ray dashboard: {base} on the cluster's head; from your "
                                            f"machine: `ray dashboard --remote-port {port} cluster.yaml`, "
                                            "then http://localhost:8265 (token auth on:")
        # Named once per trial, even when asked twice; outside a trial (no Tune, or the driver): not at all.
        assert r["marks"] == ["trial_aaa", None, "trial_bbb", None] and r["driver_mark"] is None
        _check_auth(base, token)

        def marker_rows():
            rows = [t for t in _state(base, token, "tasks") if t["name"].startswith("trial_")]
            return rows if len(rows) == 2 and all(t["state"] == "FINISHED" for t in rows) else None

        rows = _wait_for("the marker tasks on the dashboard", marker_rows, 30, proc, log)
        assert sorted(t["name"] for t in rows) == ["trial_aaa", "trial_bbb"]
        # Each row is the trial's own actor and process, not a process of its own.
        assert {(t["actor_id"], t["worker_pid"]) for t in rows} == {(r["actor_id"], r["pid"])}
        actors = [a for a in _state(base, token, "actors") if a["actor_id"] == r["actor_id"]]
        assert [a["class_name"] for a in actors] == ["Trial"]
        proc.communicate("done\n", timeout=60)
        assert proc.returncode == 0, log.read_text()[-4000:]
        out = log.read_text()
        # The log monitor took the new names: the actor's lines are prefixed by the trial's.
        assert re.search(r"\(trial_aaa pid=\d+\)\S* training aaa", out), out[-3000:]
        assert re.search(r"\(trial_bbb pid=\d+\)\S* training bbb", out), out[-3000:]
        assert token not in out  # the token is a secret: in no line
    finally:
        _stop(proc)
    print(f"\n[plain actor] {time.time() - t0:.0f}s")


# ----------------------------------------------------------------------------- on a real sweep


def test_a_sweep_dashboard_answers_to_the_token_only_and_lists_its_trials(tiny_assets, tmp_path, private):
    home, ray_tmp = private
    log = tmp_path / "sweep.log"
    storage = tmp_path / "runs"
    # three short trials (a third of the preset's budget): enough for two at once and a reused actor
    cmd = [sys.executable, "sweeps/llama_finetome.py", "--preset", "smoke", "--num-samples", "3", "--max-tokens", "20000",
           "--grace-tokens", "6000", "--no-baseline", "--final-round", "0", "--storage-path", str(storage), "--name", "dash"]
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(home, ray_tmp), stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        def dashboard_url():  # the driver's own line, printed once Ray is up
            found = LINE.search(log.read_text(errors="replace"))
            return found.group(1) if found else None

        base = _wait_for("the dashboard URL", dashboard_url, 120, proc, log)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base), base  # loopback unless --dashboard-host
        token_file = home / ".ray" / "auth_token"  # written by the sweep's own ray.init
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert f"token in {token_file}," in log.read_text()  # where to find it, never the token itself
        _check_auth(base, token)

        def sweep_job():  # the driver registers its job a moment after the dashboard is up
            status, body = _get(base + "/api/jobs/", _bearer(token))
            assert status == 200, body[:300]
            return [j for j in json.loads(body)
                    if "llama_finetome.py" in (j.get("entrypoint") or "") and j["status"] == "RUNNING"]

        _wait_for("the sweep's job on the dashboard", sweep_job, 60, proc, log)

        # Every trial that has started (its folder exists) shows on the dashboard under its name,
        # as a task on a Tune trial actor; collected while the sweep runs (its Ray goes with it).
        seen: dict[str, dict] = {}
        trial_actors: dict[str, dict] = {}
        while proc.poll() is None:
            try:
                actors = _state(base, token, "actors")
                tasks = _state(base, token, "tasks")
            except (OSError, AssertionError, json.JSONDecodeError):  # the sweep ending under us
                time.sleep(0.3)
                continue
            trial_actors.update({a["actor_id"]: a for a in actors if a.get("repr_name") == "lora_trial"})
            seen.update({t["name"]: t for t in tasks if t["name"].startswith("trial_")})
            time.sleep(0.5)
        rc = proc.wait()
        out = log.read_text(errors="replace")
        assert rc == 0, out[-4000:]
        elapsed = time.time() - t0
    finally:
        _stop(proc)

    trials = sorted(p.name for p in (storage / "dash").glob("trial_*") if p.is_dir())
    assert len(trials) == 3, trials
    assert sorted(seen) == trials, (sorted(seen), trials)
    # Tune reused its trial actors (reuse_actors): 3 trials, 2 at once, on at most 2 actors, each
    # trial's row on one of them.
    assert trial_actors and len(trial_actors) <= 2, trial_actors
    assert {t["actor_id"] for t in seen.values()} <= set(trial_actors), (seen, trial_actors)
    assert token not in out  # the token is a secret: in no line of the driver's output
    # A trial's own output (Tune's log_to_file tees sys.stdout/stderr into its folder): mark_trial's
    # line for Ray's log monitor stays out of it. (Ray's own ":actor_name:lora_trial", printed after
    # __init__ once Tune has set up its tee, does land there: Ray's and Tune's doing, left alone.)
    for f in (storage / "dash").glob("trial_*/std*"):
        assert ":actor_name:trial_" not in f.read_text(errors="replace"), f
    print(f"\n[sweep] {elapsed:.0f}s, dashboard {base}, trials {trials} on actors {sorted(trial_actors)}")
