"""Calls contextvars.copy_context() 200,000 times (three rounds) in a process that listens
on a TCP port (so the agent probes it), after a line on stdin. Used by python_context.sh."""
import contextvars, socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print("READY", flush=True)
sys.stdin.readline()
for _ in range(3):
    n = 200000
    t = time.perf_counter()
    for _ in range(n):
        contextvars.copy_context()
    print(f"{(time.perf_counter() - t) / n * 1e9:.0f} ns per copy_context()", flush=True)
