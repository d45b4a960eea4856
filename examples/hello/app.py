import os


def lambda_handler(event, context):
    name = event.get("name", "world")
    greeting = os.environ.get("GREETING", "Hello")
    return {"message": f"{greeting}, {name}!", "request_id": context.aws_request_id}
