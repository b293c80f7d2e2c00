"""Serve echo with cloop.c's C loop calling connecteur's echo handler per message (a measurement prototype).

python benchmarks/floor/cloop_server.py --cpu 0      # after building cloop.c into $CLOOP_DIR
"""

import os
import sys

sys.path.insert(0, os.environ.get("CLOOP_DIR", "/tmp/floor/cext"))

import cloop  # built by hand, found on the path above

from connecteur.tools.apps import echo

if "--cpu" in sys.argv:
    os.sched_setaffinity(0, {int(sys.argv[sys.argv.index("--cpu") + 1])})
cloop.serve(echo)
