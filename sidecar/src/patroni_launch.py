# Written by pgswarm-sidecar as <run dir>/bin/patroni, with the shebang of the installed
# `patroni` script, and run in its place. It runs Patroni unchanged but for two things: how
# Patroni starts the short-lived helper process that launches the postmaster, and how often it
# looks whether a stopping postmaster is gone.
#
# Patroni starts that helper with multiprocessing's "spawn" method: a fresh Python
# interpreter that imports Patroni's PostgreSQL modules before it can run the postmaster.
# On a busy 2-core machine that costs 0.5-0.8 s of every PostgreSQL start, including the
# in-place restart of a crashed primary, where every client waits for it. A fork server
# (multiprocessing's "forkserver" method) is a clean single-threaded process started once,
# with those modules imported in advance; each helper is then forked from it in a few ms.
# The helper does the same as before (setsid, start the postmaster, send its pid, exit), and
# the postmaster is reparented to the container's init, as before.
import multiprocessing
import sys

POSTMASTER_MODULE = "patroni.postgresql.postmaster"


def _use_fork_server():
    get_context = multiprocessing.get_context

    def get_context_with_fork_server(method=None):
        return get_context("forkserver" if method == "spawn" else method)

    multiprocessing.set_forkserver_preload([POSTMASTER_MODULE])
    multiprocessing.get_context = get_context_with_fork_server
    # Start the fork server now, in the background of Patroni's own start, so the first
    # PostgreSQL start does not wait for it either.
    from multiprocessing import forkserver

    forkserver.ensure_running()


# How often a stopping postmaster is looked at, in seconds.
#
# A leader that hands over (a switchover, or Patroni's own shutdown) stops PostgreSQL and
# releases the leader key once the postmaster is gone; only then can the new leader promote.
# Patroni looks every second (STOP_POLLING_INTERVAL), and when it finds the shutdown
# checkpoint written before the postmaster has exited, it sleeps one more second before it
# asks whether a replica has that checkpoint. A fast shutdown of a small database takes
# 0.1-0.3 s, so most of the write gap of a switchover (every client waiting) was these
# sleeps. Looking every 0.1 s changes no decision: the key is released on the same
# conditions, as soon as they hold (and the replica's check is still made before an early
# release; when it fails, the key is released after the postmaster exits, as before).
STOP_POLL_S = 0.1


def _poll_stops_faster():
    import time

    # In this order: patroni.ha first would meet a circular import.
    import patroni.postgresql
    import patroni.ha

    patroni.postgresql.STOP_POLLING_INTERVAL = STOP_POLL_S
    real_sleep = time.sleep

    class _Time:
        """`time` for patroni.ha, with the one-second wait of its shutdown hooks shortened."""

        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def sleep(seconds):
            caller = sys._getframe(1).f_code.co_name
            if caller in ("on_shutdown", "_on_shutdown") and seconds == 1:
                seconds = STOP_POLL_S
            real_sleep(seconds)

    patroni.ha.time = _Time()


if __name__ == "__main__":
    try:
        _use_fork_server()
    except Exception as e:  # Patroni still runs, with its own spawn method.
        print("pgswarm: the fork server for PostgreSQL starts is off: %r" % (e,), file=sys.stderr)
    try:
        _poll_stops_faster()
    except Exception as e:  # Patroni still runs, polling at its own pace.
        print("pgswarm: faster stop polling is off: %r" % (e,), file=sys.stderr)
    from patroni.__main__ import main

    sys.argv[0] = "patroni"
    sys.exit(main())
