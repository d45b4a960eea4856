//! A function written against the unmodified official `lambda_runtime` crate,
//! proving that nubo's Runtime API is compatible with it.
//!
//! Event: `{"name": "..."}`; response: `{"message": "Hello, <name>!", "request_id": "..."}`.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    name: Option<String>,
}

async fn handler(event: LambdaEvent<Request>) -> Result<Value, Error> {
    let name = event.payload.name.as_deref().unwrap_or("world");
    Ok(json!({
        "message": format!("Hello, {name}!"),
        "request_id": event.context.request_id,
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}
