"""Imported last by the local pool's fork server (pipeline.pools.start_server), and nowhere else.

When the driver exits, the server ends without the interpreter's teardown of everything it
preloaded: that teardown takes ~0.2 s, during which the server still holds the driver's stdout,
so whoever waits for that pipe to close (a shell pipeline, ``subprocess.run(capture_output=True)``)
waits for it too. The processes it forks clear atexit handlers (multiprocessing does), so the
workers are not affected."""
import atexit
import os

atexit.register(os._exit, 0)
