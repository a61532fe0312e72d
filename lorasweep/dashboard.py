"""The Ray dashboard of a sweep: where it is, whether it asks for Ray's auth token, and how a user
who opens it finds each trial.

Driver side: ``url()`` and ``line(address)``, the one console line the driver prints after
``ray.init``; ``env_vars()`` for ``ray.init``'s runtime env (the Train page). Trial side:
``mark_trial(trial_id)``, called where a trial starts.

Token auth (Ray 2.60, ``ray/_private/authentication/``): a local ``ray.init()`` turns it on unless
``RAY_AUTH_MODE`` says otherwise, and generates ``~/.ray/auth_token`` when no token is found; the
dashboard then answers its page's API only to ``Authorization: Bearer <token>`` (or
``X-Ray-Authorization``, or the ``ray-authentication-token`` cookie its sign-in page sets): 401
without one, 403 with a wrong one. The token is a secret: nothing here prints it, only where it
comes from.

Trials on the dashboard: a one-worker trial runs in a Tune trial actor that Tune reuses for the
next trial, and Ray fixes an actor's repr name (the Actors list's "Repr") once, when ``__init__``
returns (``_raylet.pyx`` sets ``actor_repr_name`` for the creation task only; seen here too: a
``__repr__`` that changes later leaves the listed one as it was); no API renames a live actor. So a trial names itself with a task instead: see ``mark_trial``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

PREFIX = "Ray dashboard:"
DEFAULT_PORT = 8265  # what `ray dashboard cluster.yaml` forwards, and to which local port


def url() -> str | None:
    """The running Ray's dashboard, e.g. ``http://127.0.0.1:8265``; None without Ray or without a
    dashboard (a minimal Ray install, or a head started with ``--include-dashboard=false``).

    The address Ray itself reports: ``ray.init``'s ``dashboard_url``, which is the node's
    ``webui_url`` (the port the dashboard really bound, which may be the next one when the asked one
    was taken; for a joined cluster, what the head published), or ``RAY_OVERRIDE_DASHBOARD_URL``."""
    try:
        import ray
        from ray._private import ray_constants, worker

        if not ray.is_initialized():
            return None
        raw = os.environ.get(ray_constants.RAY_OVERRIDE_DASHBOARD_URL)
        if not raw and worker._global_node is not None:
            raw = worker._global_node.webui_url
    except Exception:  # Ray Client, or a Ray without these internals: no line rather than no sweep
        return None
    if not raw:
        return None
    return (raw if raw.startswith(("http:", "https:")) else "http://" + raw).rstrip("/")


def auth_enabled() -> bool:
    """Whether this Ray checks its token (Ray's own view of this process: ``RAY_AUTH_MODE``, set to
    ``token`` by a local ``ray.init`` unless given)."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        return bool(is_token_auth_enabled())
    except Exception:
        return False


def token_source() -> str:
    """Where Ray reads the token, in the order Ray's loader uses (checked in 2.60):
    ``RAY_AUTH_TOKEN``, then the file ``RAY_AUTH_TOKEN_PATH`` names, then ``~/.ray/auth_token``.
    Never the token itself."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return os.environ["RAY_AUTH_TOKEN_PATH"]
    try:
        from ray._private.authentication.authentication_token_setup import _get_default_token_path

        return str(_get_default_token_path())
    except Exception:
        return str(Path.home() / ".ray" / "auth_token")


def line(address: str | None = None) -> str:
    """The console line the driver prints once Ray is up. ``address`` is ``--address``: None (or
    ``local``) for the sweep's own local Ray, whose dashboard is on this machine; anything else is a
    cluster, whose dashboard listens on its head (on loopback in cluster.yaml), so the line says how
    to reach it from the user's machine too."""
    u = url()
    if u is None:
        return f"{PREFIX} none (this Ray runs without one)"
    if auth_enabled():
        auth = f"token auth on: sign in with the token in {token_source()}, which `ray get-auth-token` prints"
    else:
        auth = "token auth off: whoever reaches this address can use the dashboard and run code on this Ray"
    if address in (None, "", "local"):
        return f"{PREFIX} {u} ({auth})"
    port = urlparse(u).port or DEFAULT_PORT
    if os.environ.get("KUBERNETES_SERVICE_HOST"):  # a KubeRay pod: no cluster.yaml there
        reach = f"`kubectl port-forward` the head service's port {port} (README: With KubeRay), then http://localhost:{port}"
    else:  # `ray dashboard` forwards local 8265 to the head's --remote-port (8265 by default)
        flag = "" if port == DEFAULT_PORT else f"--remote-port {port} "
        reach = f"`ray dashboard {flag}cluster.yaml`, then http://localhost:{DEFAULT_PORT}"
    return f"{PREFIX} {u} on the cluster's head; from your machine: {reach} ({auth})"


# ----------------------------------------------------------------------------- trials


def env_vars() -> dict[str, str]:
    """What the sweep's Ray processes need in their environment (``ray.init``'s
    ``runtime_env={"env_vars": ...}``) for the dashboard's Train page to list the Ray Train runs of
    multi-worker (and ``--ray-train``) trials, each named by its trial id (``RunConfig(name=...)``).

    Ray 2.60 records Train runs only with ``RAY_TRAIN_ENABLE_STATE_TRACKING=1``
    (``ray/train/v2/api/data_parallel_trainer.py``); without it the page's API
    (``/api/train/v2/runs/v1``) answers 500 "Train state data is not available". It is read where
    the TorchTrainer is built, in the Tune trial actor, and Tune does not pass it on to that actor
    (it is not in ``ray/tune/execution/class_cache.py``'s list), hence the job's runtime env. The
    cost: one detached 0-CPU ``TrainStateActor`` on the head, from the first Train run on."""
    return {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}


_marked: str | None = None  # the trial this process named last (Tune reuses the process)


def trial_name(trial_id: str) -> str:
    """A trial's name on the dashboard: the same as its folder under the sweep (``trial_<id>``)."""
    return f"trial_{trial_id}"


def _marker(actor_self) -> None:
    """The marker task's body: nothing. Its name, actor, worker and times are what the dashboard
    shows."""


def mark_trial(trial_id: str | None = None) -> str | None:
    """Name the running trial on the dashboard; call it in the trial's process when the trial starts
    (``trial_id`` defaults to Tune's for the calling trial). Returns the name given, or None when
    there was nothing to do or it could not be done: it never raises, a trial never fails for it.

    It submits a no-op task named ``trial_<id>`` to the calling actor itself: the dashboard's task
    table (the sweep's job; the state API's ``/api/v0/tasks``) then has one row per trial, searchable
    by the trial id, tied to the actor and worker process (pid) that ran it; the actor's other rows
    stay ``lora_trial.train``. A task on the same actor, rather than a task or actor of its own,
    costs no process: it runs when the actor is next free (between two of Tune's ``train`` calls,
    so at the trial's first report), in microseconds, and nobody waits for it.
    It also tells Ray's log monitor the new name (the ``:actor_name:`` line Ray itself prints after
    ``__init__``), so with ``--verbose`` (workers' output on the driver's console) the trial's lines
    read ``(trial_<id> pid=...)`` rather than ``(lora_trial pid=...)`` for every trial of an actor,
    and in the worker's log (the dashboard's Logs page) that line marks where each trial begins.
    Called twice for one trial in one process (a callback and the trial function both), it names
    it once."""
    global _marked
    try:
        import ray

        if not ray.is_initialized():
            return None
        if trial_id is None:
            from ray import tune

            trial_id = tune.get_context().get_trial_id()
        if not trial_id or trial_id == _marked:
            return None
        actor = ray.get_runtime_context().current_actor  # raises outside an actor (a driver, a task)
        name = trial_name(trial_id)
        # Fire and forget: waiting would deadlock (the actor runs one task at a time, and this one
        # is in it), and the returned ref is dropped, so the no-op's result is freed at once.
        actor.__ray_call__.options(name=name).remote(_marker)
        from ray._private import ray_constants

        tag = f"{ray_constants.LOG_PREFIX_ACTOR_NAME}{name}\n"
        # Both streams, as Ray does: the log monitor follows each of the worker's two files apart.
        # The process's own streams (the worker's log files), not sys.stdout: Tune's log_to_file
        # replaces that with a tee into the trial's folder, where this line would be noise.
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.write(tag)
                stream.flush()
        _marked = trial_id
        return name
    except Exception:
        return None
