#!/usr/bin/env python3
"""The uvloop reference for compare.py: the repository's plain asyncio echo server
(bench/servers/asyncio_echo.py: one transport.write() per read) run on uvloop's event
loop instead of the standard one, unchanged otherwise. Needs uvloop (Debian:
python3-uvloop).

    python3 bench/uvloop_echo.py --port 0
"""

import os
import runpy
import sys

import uvloop

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "..", "..", "..", "bench", "servers", "asyncio_echo.py")

if __name__ == "__main__":
    # asyncio.run() in the server picks the loop from the policy: uvloop's from here on.
    uvloop.install()
    sys.argv[0] = SERVER
    runpy.run_path(SERVER, run_name="__main__")
