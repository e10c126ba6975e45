//! Every answer `serve` gives that is not a success is JSON with a stable `reason`, and
//! every answer is counted by status and reason for `/metrics`. [`REASONS`] is the table
//! (the README documents it).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flashsale::{ControlError, RejectReason};
use serde_json::{Value, json};

/// Every `(status, reason)` an answer can have.
pub const REASONS: &[(u16, &str)] = &[
    (200, "ok"),
    (200, "confirmed"),
    (400, "bad_request"),
    (400, "invalid_quantity"),
    (401, "unauthorized"),
    (403, "buyer_mismatch"),
    (403, "not_your_order"),
    (403, "admin_disabled"),
    (403, "closed"),
    (404, "not_found"),
    (404, "unknown_sku"),
    (404, "unknown_order"),
    (405, "method_not_allowed"),
    (408, "body_timeout"),
    (409, "sold_out"),
    (409, "insufficient_stock"),
    (409, "user_limit"),
    (409, "duplicate"),
    (409, "already_pooled"),
    (409, "pool_full"),
    (409, "waitlist_full"),
    (409, "already_paid"),
    (409, "cancelled"),
    (409, "hold_expired"),
    (409, "not_enough_available"),
    (409, "stock_overflow"),
    (409, "window_inverted"),
    (413, "body_too_large"),
    (425, "not_open_yet"),
    (429, "busy"),
    (429, "rate_limited"),
    (501, "not_in_cluster"),
    (503, "recovering"),
    (503, "shut_down"),
    (503, "shard_failed"),
    (503, "unanswered"),
];

/// Answers counted by [`REASONS`] index.
#[derive(Debug)]
pub struct Counts([AtomicU64; REASONS.len()]);

impl Default for Counts {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Counts {
    /// Counts one answer.
    pub fn count(&self, status: u16, reason: &str) {
        if let Some(index) = REASONS
            .iter()
            .position(|&(s, r)| s == status && r == reason)
        {
            self.0[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Each `(status, reason, count)`.
    pub fn all(&self) -> impl Iterator<Item = (u16, &'static str, u64)> + '_ {
        REASONS
            .iter()
            .zip(&self.0)
            .map(|(&(status, reason), count)| (status, reason, count.load(Ordering::Relaxed)))
    }
}

/// A JSON answer `{"reason": reason, ...extra}` with `status`, counted.
pub fn fail(counts: &Counts, status: StatusCode, reason: &'static str, extra: Value) -> Response {
    counts.count(status.as_u16(), reason);
    let mut body = json!({ "reason": reason });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    let mut response = (status, axum::Json(body)).into_response();
    match status {
        StatusCode::TOO_MANY_REQUESTS if !response.headers().contains_key(header::RETRY_AFTER) => {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        StatusCode::UNAUTHORIZED => {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    response
}

/// A 400 naming the field and what was wrong with it.
pub fn bad_request(counts: &Counts, field: &str, error: impl Into<String>) -> Response {
    fail(
        counts,
        StatusCode::BAD_REQUEST,
        "bad_request",
        json!({ "field": field, "error": error.into() }),
    )
}

/// A 200 with `body`, counted as `ok`.
pub fn ok(counts: &Counts, body: Value) -> Response {
    counts.count(200, "ok");
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// The status of an engine rejection.
pub fn reject_status(reason: RejectReason) -> StatusCode {
    match reason {
        RejectReason::InvalidQuantity => StatusCode::BAD_REQUEST,
        RejectReason::UnknownSku => StatusCode::NOT_FOUND,
        RejectReason::NotOpenYet => StatusCode::TOO_EARLY,
        RejectReason::Closed => StatusCode::FORBIDDEN,
        RejectReason::ShardFailed => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::CONFLICT,
    }
}

/// The status and reason of a control error.
pub fn control_error(error: ControlError) -> (StatusCode, &'static str, Value) {
    match error {
        ControlError::UnknownOrder(_) => (StatusCode::NOT_FOUND, "unknown_order", json!({})),
        ControlError::UnknownSku(_) => (StatusCode::NOT_FOUND, "unknown_sku", json!({})),
        ControlError::AlreadyPaid => (StatusCode::CONFLICT, "already_paid", json!({})),
        ControlError::Cancelled => (StatusCode::CONFLICT, "cancelled", json!({})),
        ControlError::HoldExpired => (StatusCode::CONFLICT, "hold_expired", json!({})),
        ControlError::NotEnoughAvailable { available } => (
            StatusCode::CONFLICT,
            "not_enough_available",
            json!({ "available": available }),
        ),
        ControlError::StockOverflow => (StatusCode::CONFLICT, "stock_overflow", json!({})),
        ControlError::WindowInverted => (StatusCode::CONFLICT, "window_inverted", json!({})),
        ControlError::ShutDown => (StatusCode::SERVICE_UNAVAILABLE, "shut_down", json!({})),
        ControlError::ShardFailed => (StatusCode::SERVICE_UNAVAILABLE, "shard_failed", json!({})),
    }
}
