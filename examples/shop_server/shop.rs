//! The shop: an axum router over one engine and its [`AsyncClient`]. `main.rs` serves it;
//! `tests/shop_server.rs` includes this file as a module and drives it with reqwest.
//!
//! Routes:
//! - `POST /sales/{sku}/buy`, JSON body `{"user": u64, "qty": u32, "key": u64}` (`key`: the
//!   buyer's idempotency key for this press; a retry sends the same one). Answers:
//!   - 200 `{"order": id, "sku", "user", "qty", "sequence"}`: units held for the buyer;
//!   - 409 `{"reason"}`: `sold_out`, `insufficient_stock`, `user_limit`, or `duplicate`
//!     with the existing `"order"` id (also `already_pooled`, `pool_full`,
//!     `waitlist_full` for sales with draws or waitlists);
//!   - 425 `not_open_yet` (with `opens_in_ms`), 403 `closed`;
//!   - 429 `busy` with `Retry-After: 1`: every lane of the engine is full; nothing was
//!     reserved, the same request may be sent again;
//!   - 400 `{"error", "field"}`: the body is not JSON, not an object, a field is missing,
//!     has the wrong type or range, or is unknown; or the path's SKU is not a number;
//!   - 404 `unknown_sku`; 503 `shut_down` / `shard_failed`.
//! - `GET /sales/{sku}`: the SKU's labels, stock, units available, limit, window and state
//!   (`upcoming`, `open`, `sold_out`, `closed`).
//! - `GET /metrics`: Prometheus text format: answers by status and reason, the engine's
//!   part of each buy (submit to outcome) as a summary with percentiles, intents in flight
//!   on each client lane, units available per SKU, confirmed orders.
//!
//! The body is read as JSON whatever its `Content-Type` (so `curl -d` works as is).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flashsale::{
    AsyncClient, Catalog, Engine, GroupId, Intent, Outcome, RejectReason, SaleWindow, SkuId,
    SkuSpec, SubmitError, UserId,
};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

/// What a buy request was answered, for `/metrics`: one per reject reason, then these.
const CONFIRMED: usize = RejectReason::ALL.len();
const BUSY: usize = CONFIRMED + 1;
const SHUT_DOWN: usize = CONFIRMED + 2;
const SHARD_FAILED_REFUSED: usize = CONFIRMED + 3;
const BAD_REQUEST: usize = CONFIRMED + 4;
const ANSWERS: usize = CONFIRMED + 5;

/// The engine, its client, and the shop's own counts.
pub struct Shop {
    engine: Engine,
    client: AsyncClient,
    answers: [AtomicU64; ANSWERS],
    /// The engine's part of each buy: from the submit to the outcome, ns.
    latency: Mutex<Histogram<u64>>,
}

impl Shop {
    /// A shop selling through `engine`, with an async client of `lanes` lanes.
    pub fn new(engine: Engine, lanes: usize) -> std::io::Result<Arc<Self>> {
        let client = AsyncClient::new(&engine, lanes)?;
        Ok(Arc::new(Self {
            engine,
            client,
            answers: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: Mutex::new(flashsale::report::latency_histogram()),
        }))
    }

    /// Stops the engine (once every request holding the shop has finished) and returns
    /// its report.
    pub fn shutdown(self: Arc<Self>) -> Option<flashsale::Report> {
        let shop = Arc::into_inner(self)?;
        drop(shop.client);
        Some(shop.engine.shutdown())
    }

    fn count(&self, answer: usize) {
        self.answers[answer].fetch_add(1, Ordering::Relaxed);
    }
}

/// The default sale, so that a newcomer can try the server with curl: SKU 1 (`stock`
/// units) and SKU 2 (500 units) are two sizes of one trainer, at most `limit` pairs per
/// buyer across both; SKU 3 goes on sale in an hour (425); SKU 4's sale has ended (403).
pub fn default_catalog(stock: u32, limit: u32) -> Result<Catalog, flashsale::CatalogError> {
    let trainer = GroupId(1);
    let hour_ns = 3_600 * 1_000_000_000;
    Catalog::builder()
        .group(trainer, limit)
        .sku(
            SkuSpec::new(SkuId(1), stock)
                .labels("Aurora trainer", "EU 42")
                .group(trainer),
        )
        .sku(
            SkuSpec::new(SkuId(2), 500)
                .labels("Aurora trainer", "EU 43")
                .group(trainer),
        )
        .sku(
            SkuSpec::new(SkuId(3), 200)
                .labels("Nimbus hoodie", "M")
                .limit(1)
                .window(SaleWindow {
                    opens_at_ns: hour_ns,
                    closes_at_ns: 2 * hour_ns,
                }),
        )
        .sku(
            SkuSpec::new(SkuId(4), 100)
                .labels("Comet mug", "one size")
                .window(SaleWindow {
                    opens_at_ns: 0,
                    closes_at_ns: 1,
                }),
        )
        .build()
}

/// The routes (see the module docs).
pub fn router(shop: Arc<Shop>) -> Router {
    Router::new()
        .route("/sales/{sku}/buy", post(buy))
        .route("/sales/{sku}", get(sale))
        .route("/metrics", get(metrics))
        .with_state(shop)
}

/// A 400 naming what was wrong.
fn bad_request(shop: &Shop, field: &str, error: impl Into<String>) -> Response {
    shop.count(BAD_REQUEST);
    let body = json!({ "error": error.into(), "field": field });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// The path's SKU, or the 400 to answer.
fn parse_sku(shop: &Shop, sku: &str) -> Result<SkuId, Box<Response>> {
    sku.parse::<u32>().map(SkuId).map_err(|_| {
        Box::new(bad_request(
            shop,
            "sku",
            format!("the SKU in the path must be a u32, not {sku:?}"),
        ))
    })
}

/// The body's fields, each checked and named when wrong.
fn parse_body(body: &[u8]) -> Result<(u64, u32, u64), (&'static str, String)> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| ("body", format!("the body is not JSON: {error}")))?;
    let Value::Object(object) = value else {
        return Err((
            "body",
            "the body must be a JSON object {user, qty, key}".into(),
        ));
    };
    if let Some(unknown) = object
        .keys()
        .find(|key| !matches!(key.as_str(), "user" | "qty" | "key"))
    {
        return Err((
            "body",
            format!("unknown field {unknown:?}; the fields are user, qty and key"),
        ));
    }
    fn number<T: TryFrom<u64>>(
        object: &Map<String, Value>,
        field: &'static str,
        what: &str,
    ) -> Result<T, (&'static str, String)> {
        let value = object
            .get(field)
            .ok_or_else(|| (field, format!("missing field {field:?} ({what})")))?;
        value
            .as_u64()
            .and_then(|number| T::try_from(number).ok())
            .ok_or_else(|| (field, format!("{field:?} must be {what}, not {value}")))
    }
    let user = number(&object, "user", "a u64 buyer id")?;
    let qty = number(&object, "qty", "a u32 quantity")?;
    let key = number(&object, "key", "a u64 idempotency key")?;
    Ok((user, qty, key))
}

async fn buy(State(shop): State<Arc<Shop>>, Path(sku): Path<String>, body: Bytes) -> Response {
    let sku = match parse_sku(&shop, &sku) {
        Ok(sku) => sku,
        Err(response) => return *response,
    };
    let (user, qty, key) = match parse_body(&body) {
        Ok(fields) => fields,
        Err((field, error)) => return bad_request(&shop, field, error),
    };
    let intent = Intent {
        user: UserId(user),
        client_key: key,
        sku,
        quantity: qty,
    };
    let start = Instant::now();
    let result = shop.client.try_buy(intent).await;
    let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    shop.latency.lock().saturating_record(nanos.max(1));
    match result {
        Ok(Outcome::Confirmed(order)) => {
            shop.count(CONFIRMED);
            let body = json!({
                "order": order.id.0,
                "sku": order.sku.0,
                "user": order.user.0,
                "qty": order.quantity,
                "sequence": order.sequence,
            });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Ok(Outcome::Rejected { reason, .. }) => {
            shop.count(reason.index());
            rejected(&shop, sku, reason)
        }
        Err(SubmitError::Busy(_)) => {
            shop.count(BUSY);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
                axum::Json(json!({ "reason": "busy" })),
            )
                .into_response()
        }
        Err(SubmitError::ShutDown(_)) => {
            shop.count(SHUT_DOWN);
            unavailable("shut_down")
        }
        Err(SubmitError::ShardFailed(_)) => {
            shop.count(SHARD_FAILED_REFUSED);
            unavailable("shard_failed")
        }
    }
}

fn unavailable(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({ "reason": reason })),
    )
        .into_response()
}

/// The HTTP status of a rejection.
pub fn status_of(reason: RejectReason) -> StatusCode {
    match reason {
        RejectReason::InvalidQuantity => StatusCode::BAD_REQUEST,
        RejectReason::UnknownSku => StatusCode::NOT_FOUND,
        RejectReason::NotOpenYet => StatusCode::TOO_EARLY,
        RejectReason::Closed => StatusCode::FORBIDDEN,
        RejectReason::ShardFailed => StatusCode::SERVICE_UNAVAILABLE,
        RejectReason::Duplicate(_)
        | RejectReason::UserLimit
        | RejectReason::SoldOut
        | RejectReason::InsufficientStock
        | RejectReason::AlreadyPooled
        | RejectReason::PoolFull
        | RejectReason::WaitlistFull => StatusCode::CONFLICT,
    }
}

fn rejected(shop: &Shop, sku: SkuId, reason: RejectReason) -> Response {
    let mut body = json!({ "reason": reason.name() });
    match reason {
        RejectReason::Duplicate(order) => body["order"] = json!(order.0),
        RejectReason::InvalidQuantity => {
            body["field"] = json!("qty");
            body["error"] = json!("qty must be at least 1 and at most the engine's max_quantity");
        }
        RejectReason::NotOpenYet => {
            if let Some(spec) = shop.engine.catalog().sku(sku) {
                let wait_ns = spec.window.opens_at_ns.saturating_sub(shop.engine.now_ns());
                body["opens_in_ms"] = json!(wait_ns / 1_000_000);
            }
        }
        _ => {}
    }
    (status_of(reason), axum::Json(body)).into_response()
}

async fn sale(State(shop): State<Arc<Shop>>, Path(sku): Path<String>) -> Response {
    let sku = match parse_sku(&shop, &sku) {
        Ok(sku) => sku,
        Err(response) => return *response,
    };
    let (Some(spec), Some(available)) =
        (shop.engine.catalog().sku(sku), shop.engine.available(sku))
    else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "reason": "unknown_sku" })),
        )
            .into_response();
    };
    let now = shop.engine.now_ns();
    let window = spec.window;
    let state = if now < window.opens_at_ns {
        "upcoming"
    } else if now >= window.closes_at_ns {
        "closed"
    } else if available == 0 {
        "sold_out"
    } else {
        "open"
    };
    let ms = |ns: u64| ns / 1_000_000;
    let limit = spec
        .group
        .and_then(|group| shop.engine.catalog().group(group))
        .map_or(spec.limit_per_buyer, |group| {
            group.limit_per_buyer.min(spec.limit_per_buyer)
        });
    let body = json!({
        "sku": sku.0,
        "product": spec.product,
        "variant": spec.variant,
        "stock": spec.stock,
        "available": available,
        "limit_per_buyer": limit,
        "state": state,
        "opens_in_ms": ms(window.opens_at_ns.saturating_sub(now)),
        "closes_in_ms": (window.closes_at_ns != u64::MAX).then(|| ms(window.closes_at_ns.saturating_sub(now))),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// One `name{labels} value` line.
fn line(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    use std::fmt::Write as _;
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

async fn metrics(State(shop): State<Arc<Shop>>) -> Response {
    let mut out = String::new();
    out.push_str(
        "# HELP flashsale_http_buy_answers_total Answers to POST /sales/{sku}/buy, by status and reason.\n\
         # TYPE flashsale_http_buy_answers_total counter\n",
    );
    let count = |answer: usize| shop.answers[answer].load(Ordering::Relaxed);
    line(
        &mut out,
        "flashsale_http_buy_answers_total",
        r#"status="200",reason="confirmed""#,
        count(CONFIRMED),
    );
    for reason in RejectReason::ALL {
        let labels = format!(
            r#"status="{}",reason="{}""#,
            status_of(reason).as_u16(),
            reason.name()
        );
        line(
            &mut out,
            "flashsale_http_buy_answers_total",
            &labels,
            count(reason.index()),
        );
    }
    for (answer, status, reason) in [
        (BUSY, 429, "busy"),
        (SHUT_DOWN, 503, "shut_down"),
        (SHARD_FAILED_REFUSED, 503, "shard_failed_at_submit"),
        (BAD_REQUEST, 400, "bad_request"),
    ] {
        let labels = format!(r#"status="{status}",reason="{reason}""#);
        line(
            &mut out,
            "flashsale_http_buy_answers_total",
            &labels,
            count(answer),
        );
    }

    out.push_str(
        "# HELP flashsale_engine_buy_seconds The engine's part of each buy: from the submit to the outcome, HTTP excluded.\n\
         # TYPE flashsale_engine_buy_seconds summary\n",
    );
    {
        let latency = shop.latency.lock();
        for quantile in [0.5, 0.9, 0.99, 0.999, 1.0] {
            let seconds = latency.value_at_quantile(quantile) as f64 / 1e9;
            line(
                &mut out,
                "flashsale_engine_buy_seconds",
                &format!(r#"quantile="{quantile}""#),
                seconds,
            );
        }
        let sum: f64 = latency
            .iter_recorded()
            .map(|value| value.value_iterated_to() as f64 * value.count_at_value() as f64)
            .sum();
        line(&mut out, "flashsale_engine_buy_seconds_sum", "", sum / 1e9);
        line(
            &mut out,
            "flashsale_engine_buy_seconds_count",
            "",
            latency.len(),
        );
    }

    out.push_str(
        "# HELP flashsale_client_lane_in_flight Intents in flight on each async-client lane (its rings to the shards, and intents waiting at a shard).\n\
         # TYPE flashsale_client_lane_in_flight gauge\n",
    );
    for (lane, in_flight) in shop.client.in_flight().into_iter().enumerate() {
        line(
            &mut out,
            "flashsale_client_lane_in_flight",
            &format!(r#"lane="{lane}""#),
            in_flight,
        );
    }

    out.push_str(
        "# HELP flashsale_sku_available Units of each SKU available, as its shard last published.\n\
         # TYPE flashsale_sku_available gauge\n",
    );
    for spec in shop.engine.catalog().skus() {
        let available = shop.engine.available(spec.id).unwrap_or(0);
        line(
            &mut out,
            "flashsale_sku_available",
            &format!(r#"sku="{}""#, spec.id.0),
            available,
        );
    }

    let live = shop.engine.live();
    out.push_str(
        "# HELP flashsale_confirmed_orders_total Orders the engine confirmed.\n\
         # TYPE flashsale_confirmed_orders_total counter\n",
    );
    line(
        &mut out,
        "flashsale_confirmed_orders_total",
        "",
        live.confirmed_orders,
    );
    out.push_str(
        "# HELP flashsale_decided_by_shards_total Intents the shards decided (the rest were answered at submit).\n\
         # TYPE flashsale_decided_by_shards_total counter\n",
    );
    line(
        &mut out,
        "flashsale_decided_by_shards_total",
        "",
        live.decided_by_shards,
    );

    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response()
}
