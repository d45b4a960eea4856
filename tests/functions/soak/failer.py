# soak: always fails, so every async event ends (retries set to 0) in its
# dead-letter destination, another function.
def handler(event, context):
    raise RuntimeError("soak: failing on purpose")
