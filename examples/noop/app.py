"""The benchmark function: returns its event unchanged, so a measurement sees
only the platform's overhead (routing, sandbox, Runtime API, runtime loop)."""


def handler(event, context):
    return event
