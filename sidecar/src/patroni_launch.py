# Written by pgswarm-sidecar as <run dir>/bin/patroni, with the shebang of the installed
# `patroni` script, and run in its place. It runs Patroni unchanged but for one thing: how
# Patroni starts the short-lived helper process that launches the postmaster.
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


if __name__ == "__main__":
    try:
        _use_fork_server()
    except Exception as e:  # Patroni still runs, with its own spawn method.
        print("pgswarm: the fork server for PostgreSQL starts is off: %r" % (e,), file=sys.stderr)
    from patroni.__main__ import main

    sys.argv[0] = "patroni"
    sys.exit(main())
