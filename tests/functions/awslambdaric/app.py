"""Handler run by the official awslambdaric (see ./bootstrap)."""


def handler(event, context):
    return {"ric": True, "name": event.get("name"), "request_id": context.aws_request_id}
