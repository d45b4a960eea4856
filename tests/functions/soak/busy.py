# soak: spins the CPU for 100 ms of its own CPU time (process time, so a
# loaded machine makes the call longer, not cheaper).
import time


def handler(event, context):
    start = time.process_time()
    n = 0
    while time.process_time() - start < 0.1:
        n += 1
    return {"spins": n}
