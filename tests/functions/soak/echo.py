# soak: the plain call (also the dead-letter sink): returns its event.
def handler(event, context):
    return event
