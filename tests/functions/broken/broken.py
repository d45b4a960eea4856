# Fails at import: the init error must reach the caller and the log.
import nubo_module_that_does_not_exist  # noqa: F401


def handler(event, context):
    return {}
