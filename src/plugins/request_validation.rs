//! `request_validation`: the request body checked against a JSON Schema
//! (the `jsonschema` crate, compiled once per config; no remote `$ref` is
//! ever fetched). The body is read whole within the route's body limit,
//! then forwarded as it came.
//!
//! - A body whose `Content-Type` is not one of `content_types` (default
//!   `application/json` and `*/*+json`) is refused: a route that expects
//!   JSON never lets a body through unchecked under another label.
//! - Invalid JSON, or JSON the schema refuses: 400 `validation-failed`
//!   naming the failing place as a JSON pointer (`pointer`).
//! - A request without a body passes for methods that usually carry none
//!   (GET, HEAD, DELETE, OPTIONS); POST, PUT and PATCH need one.

use http::{Method, request};

use crate::body::RequestBody;
use crate::config::RequestValidationConfig;
use crate::error::GatewayError;

/// The longest schema message passed on to the client.
const MAX_MESSAGE: usize = 200;

pub struct RequestValidation {
    validator: jsonschema::Validator,
    /// Lowercased media types; empty = JSON ones.
    content_types: Vec<String>,
}

impl RequestValidation {
    /// Errors name the field under `request_validation`.
    pub fn new(cfg: &RequestValidationConfig) -> Result<RequestValidation, (String, String)> {
        let schema = match &cfg.json_schema {
            serde_json::Value::String(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ("json_schema".to_string(), format!("cannot read {path}: {e}")))?;
                serde_json::from_str(&text)
                    .map_err(|e| ("json_schema".to_string(), format!("{path} is not JSON: {e}")))?
            }
            inline => inline.clone(),
        };
        let validator = jsonschema::validator_for(&schema)
            .map_err(|e| ("json_schema".to_string(), format!("not a valid JSON Schema: {e}")))?;
        let content_types = cfg
            .content_types
            .iter()
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        Ok(RequestValidation {
            validator,
            content_types,
        })
    }

    fn accepts(&self, media_type: &str) -> bool {
        if self.content_types.is_empty() {
            return media_type == "application/json"
                || media_type
                    .split_once('/')
                    .is_some_and(|(_, sub)| sub.ends_with("+json"));
        }
        self.content_types.iter().any(|t| t == media_type)
    }

    pub async fn check(&self, req: &request::Parts, body: &mut RequestBody) -> Result<(), GatewayError> {
        let media_type = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        let bodiless = matches!(
            req.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
        );
        let data = body.read_whole().await?;
        if data.is_empty() && media_type.is_none() && bodiless {
            return Ok(());
        }
        let Some(media_type) = media_type.filter(|t| self.accepts(t)) else {
            return Err(failed(
                "",
                "the body must be JSON (Content-Type: application/json)".into(),
            ));
        };
        if data.is_empty() {
            return Err(failed("", format!("a {media_type} body is required")));
        }
        let instance: serde_json::Value = serde_json::from_slice(&data)
            .map_err(|e| failed("", format!("the body is not valid JSON: {e}")))?;
        match self.validator.validate(&instance) {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut message = e.to_string();
                if message.len() > MAX_MESSAGE {
                    let mut cut = MAX_MESSAGE;
                    while !message.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    message.truncate(cut);
                    message.push('…');
                }
                Err(failed(e.instance_path().as_str(), message))
            }
        }
    }
}

fn failed(pointer: &str, detail: String) -> GatewayError {
    GatewayError::ValidationFailed {
        pointer: pointer.to_string(),
        detail,
    }
}
