//! Turning warp rejections and handler errors into JSON answers:
//! `{"status":"error","error":"<what is wrong>"}` with the right status code.

use std::convert::Infallible;

use serde_json::json;
use warp::http::StatusCode;
use warp::reject::Reject;

/// An error a handler answers with: a status and a message for the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
}

impl Reject for ApiError {}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

/// The JSON error reply.
pub fn error_reply(
    status: StatusCode,
    message: &str,
    retry_after: Option<u64>,
) -> warp::reply::Response {
    use warp::Reply;
    let body = warp::reply::json(&json!({"status": "error", "error": message}));
    let mut response = warp::reply::with_status(body, status).into_response();
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(
            warp::http::header::RETRY_AFTER,
            warp::http::HeaderValue::from(seconds),
        );
    }
    response
}

/// Maps every rejection to a JSON answer; nothing reaches the client as a bare warp text.
pub async fn recover(rejection: warp::Rejection) -> Result<warp::reply::Response, Infallible> {
    if let Some(super::guard::Refused(refusal)) = rejection.find() {
        return Ok(refusal.reply());
    }
    let (status, message, retry_after) = if let Some(e) = rejection.find::<ApiError>() {
        (e.status, e.message.clone(), e.retry_after)
    } else if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "no such endpoint".to_owned(), None)
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this endpoint".to_owned(),
            None,
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body is larger than the limit".to_owned(),
            None,
        )
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json".to_owned(),
            None,
        )
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid query string: {e}"),
            None,
        )
    } else if let Some(e) = rejection.find::<warp::reject::MissingHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string(), None)
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string(), None)
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "a Content-Length header is required".to_owned(),
            None,
        )
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error".to_owned(),
            None,
        )
    };
    Ok(error_reply(status, &message, retry_after))
}
