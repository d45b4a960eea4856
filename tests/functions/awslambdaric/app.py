# Run by the unmodified official AWS runtime interface client (awslambdaric):
# `bootstrap` starts `python3 -m awslambdaric app.handler`.


def handler(event, context):
    return {"ric": True, "name": event.get("name"), "request_id": context.aws_request_id}
