"""The embedded mesh behind ``voicemesh up``, ``status`` and ``down``, as local processes.

``up`` writes a plan (which processes to run, on which ports, with which
environment) and hands it to a supervisor, a detached ``voicemesh supervise``
process (or the ``up`` process itself with ``--foreground``). The supervisor
starts Redis and every service replica, restarts any that exits with
exponential backoff, records what runs in a state file, and on SIGTERM stops
the services first and Redis last. ``status`` and ``down`` only read that state
file and signal the recorded processes.

Modules, each pointing only at the ones above it:

* :mod:`~voicemesh.mesh.plan`: what to start, in which order, with which env and
  ports, and the scaling checks (pure: starts nothing);
* :mod:`~voicemesh.mesh.state`: the state file, pids, signals, log tails;
* :mod:`~voicemesh.mesh.health`: probes and the wait for a new mesh to be ready;
* :mod:`~voicemesh.mesh.supervisor`: the supervisor and its restart backoff;
* :mod:`~voicemesh.mesh.control`: starting and stopping a mesh from outside it.

Nothing here prints; the CLI (:mod:`voicemesh.cli.mesh`) tells the user.

Everything lives under ``CommonSettings().home``::

    run/plan.json      what to start (written by up, read by the supervisor)
    run/state.json     what runs now (written by the supervisor, atomically)
    logs/<service>[-<i>].log, logs/redis.log, logs/supervisor.log
    redis/             data of the bundled Redis
    run/nginx-<port>/  config, pid, logs and temp files of the front door (--with-nginx)
"""
