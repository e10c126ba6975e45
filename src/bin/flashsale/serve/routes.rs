//! The routes. Buyers: `POST /sales/{sku}/buy`, `GET /sales`, `GET /sales/{sku}`,
//! `GET /orders/{id}`, `POST /orders/{id}/pay`, `POST /orders/{id}/cancel`. Downstream
//! systems: `GET /orders/events`. Operators: `POST /admin/sales/{sku}/{restock, reduce,
//! window, close, reopen}`. Everyone: `GET /healthz`, `GET /readyz`, `GET /metrics`.
//! Every error answer is JSON with a stable `reason` (see [`super::answer::REASONS`]).
//!
//! Checks return `Result<_, Response>`: the error is the answer to send, built once, on a
//! path far rarer than the request it refuses.
#![allow(
    clippy::result_large_err,
    reason = "the Err of a check is the HTTP answer itself, 128 bytes, on the refusal path"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flashsale::{
    ControlError, Intent, LiveSale, OrderId, OrderStatus, Outcome, RejectReason, SaleWindow, SkuId,
    SubmitError, UserId,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::answer::{self, bad_request, fail, ok};
use super::auth::{self, Buyers, NotABuyer};
use super::feed::{CursorError, Feed};
use super::{Running, Server};

type Shared = State<Arc<Server>>;

/// Every route.
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/sales", get(sales))
        .route("/sales/{sku}", get(sale))
        .route("/sales/{sku}/buy", post(buy))
        .route("/orders/events", get(events))
        .route("/orders/{id}", get(order))
        .route("/orders/{id}/pay", post(pay))
        .route("/orders/{id}/cancel", post(cancel))
        .route("/admin/sales/{sku}/{action}", post(admin))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(super::metrics::metrics))
        .route("/", get(super::dashboard::page))
        .route("/events", get(super::dashboard::events))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(server)
}

pub(super) async fn not_found(State(server): Shared) -> Response {
    fail(
        &server.counts,
        StatusCode::NOT_FOUND,
        "not_found",
        json!({}),
    )
}

pub(super) async fn method_not_allowed(State(server): Shared) -> Response {
    fail(
        &server.counts,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        json!({}),
    )
}

/// The engine, or the 503 to answer while it recovers.
fn running(server: &Server) -> Result<&Running, Response> {
    server.running.get().ok_or_else(|| {
        fail(
            &server.counts,
            StatusCode::SERVICE_UNAVAILABLE,
            "recovering",
            json!({}),
        )
    })
}

/// A path number in canonical decimal, or the 400 naming it.
pub(super) fn path_number(server: &Server, field: &str, text: &str) -> Result<u64, Response> {
    auth::canonical_u64(text).ok_or_else(|| {
        bad_request(
            &server.counts,
            field,
            format!(
                "{field} must be a number from 0 to {} in plain decimal (no sign, no leading \
                 zero), not {text:?}",
                u64::MAX
            ),
        )
    })
}

pub(super) fn path_sku(server: &Server, text: &str) -> Result<SkuId, Response> {
    let number = path_number(server, "sku", text)?;
    u32::try_from(number)
        .map(SkuId)
        .map_err(|_| bad_request(&server.counts, "sku", format!("{number} is not a u32")))
}

/// The body, read within the body timeout and the size limit.
pub(super) async fn read_body(
    server: &Server,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, Response> {
    let too_large = || {
        fail(
            &server.counts,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            json!({ "limit": server.body_limit }),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > server.body_limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(
        server.body_timeout,
        axum::body::to_bytes(body, server.body_limit),
    )
    .await
    {
        Err(_) => Err(fail(
            &server.counts,
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            json!({ "timeout_ms": server.body_timeout.as_millis() as u64 }),
        )),
        Ok(Err(error)) if format!("{error:?}").contains("LengthLimit") => Err(too_large()),
        Ok(Err(error)) => Err(bad_request(
            &server.counts,
            "body",
            format!("the body could not be read: {error}"),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// A JSON body of exactly `T`'s fields (unknown and repeated fields refused), or the 400
/// naming the field.
pub(super) fn parse<T: DeserializeOwned>(server: &Server, bytes: &[u8]) -> Result<T, Response> {
    let text = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    // serde reads a struct from a JSON array too, by position: a body is an object.
    if text.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err(bad_request(
            &server.counts,
            "body",
            "the body must be a JSON object",
        ));
    }
    let mut json = serde_json::Deserializer::from_slice(text);
    let value = serde_path_to_error::deserialize::<_, T>(&mut json).map_err(|error| {
        let message = error.inner().to_string();
        let path = error.path().to_string();
        let field = if path != "." && !path.is_empty() {
            path
        } else {
            // Unknown, repeated and missing fields are named in the message.
            message
                .split('`')
                .nth(1)
                .map_or_else(|| "body".to_owned(), str::to_owned)
        };
        bad_request(&server.counts, &field, message)
    })?;
    json.end().map_err(|error| {
        bad_request(
            &server.counts,
            "body",
            format!("after the JSON object: {error}"),
        )
    })?;
    Ok(value)
}

/// The buyer the request authenticates (`None` in demo mode), or the 401.
pub(super) fn buyer(server: &Server, headers: &HeaderMap) -> Result<Option<u64>, Response> {
    server
        .buyers
        .buyer(headers)
        .map_err(|NotABuyer::Unauthorized(why)| {
            fail(
                &server.counts,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                json!({ "error": why }),
            )
        })
}

pub(super) fn is_operator(server: &Server, headers: &HeaderMap) -> bool {
    server
        .admin_token
        .as_deref()
        .is_some_and(|token| auth::is_operator(headers, token))
}

/// Runs a blocking engine call off the async workers.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or(Err(ControlError::ShutDown))
}

fn control_failed(server: &Server, error: ControlError) -> Response {
    let (status, reason, extra) = answer::control_error(error);
    fail(&server.counts, status, reason, extra)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuyBody {
    #[serde(default)]
    user: Option<u64>,
    qty: u32,
    key: u64,
    /// Rather than be rejected as sold out, wait on the SKU's waitlist.
    #[serde(default)]
    wait: bool,
}

async fn buy(
    State(server): Shared,
    Path(sku): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match try_buy(&server, &sku, &headers, body).await {
        Ok(response) | Err(response) => response,
    }
}

/// A buy request, checked: the SKU, the buyer (authenticated and within its rate), the
/// body. The intent and whether it waits, or the answer refusing it.
pub(super) async fn buy_request(
    server: &Server,
    sku: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Intent, bool), Response> {
    let sku = path_sku(server, sku)?;
    let authenticated = buyer(server, headers)?;
    let bytes = read_body(server, headers, body).await?;
    let body: BuyBody = parse(server, &bytes)?;
    let user = match (authenticated, body.user) {
        (Some(buyer), Some(user)) if buyer != user => {
            return Err(fail(
                &server.counts,
                StatusCode::FORBIDDEN,
                "buyer_mismatch",
                json!({ "error": "the body's user is not the authenticated buyer" }),
            ));
        }
        (Some(buyer), _) => buyer,
        (None, Some(user)) => user,
        (None, None) => {
            return Err(bad_request(
                &server.counts,
                "user",
                "missing field `user` (the buyer id)",
            ));
        }
    };
    if let Err(not_until) = server.limiter.check_key(&user) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let mut response = fail(
            &server.counts,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            json!({ "retry_after_ms": wait.as_millis() as u64 }),
        );
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Err(response);
    }
    let intent = Intent {
        user: UserId(user),
        client_key: body.key,
        sku,
        quantity: body.qty,
    };
    Ok((intent, body.wait))
}

/// The 200 for a confirmed order.
pub(super) fn confirmed(server: &Server, order: &flashsale::Order) -> Response {
    server.counts.count(200, "confirmed");
    let spec_hold = server.catalog.sku(order.sku).and_then(|spec| spec.hold_ns);
    let mut body = json!({
        "order": order.id.0,
        "sku": order.sku.0,
        "user": order.user.0,
        "qty": order.quantity,
        "sequence": order.sequence,
        "state": "held",
    });
    if spec_hold.is_some() {
        // The exact deadline is the order's (GET /orders/{id}); this is its hold.
        body["hold_ms"] = json!(spec_hold.unwrap_or(0) / 1_000_000);
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn try_buy(
    server: &Arc<Server>,
    sku: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let running = running(server)?;
    let (intent, wait) = buy_request(server, sku, headers, body).await?;
    let start = Instant::now();
    let result = if wait {
        running.client.buy_or_wait(intent).await
    } else {
        running.client.try_buy(intent).await
    };
    let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    server.latency.lock().saturating_record(nanos.max(1));
    Ok(match result {
        Ok(Outcome::Confirmed(order)) => confirmed(server, &order),
        Ok(Outcome::Rejected { reason, .. }) => {
            rejected(server, intent.sku, reason, running.engine.now_ns())
        }
        Err(SubmitError::Busy(_)) => fail(
            &server.counts,
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            json!({}),
        ),
        Err(SubmitError::ShutDown(_)) => fail(
            &server.counts,
            StatusCode::SERVICE_UNAVAILABLE,
            "shut_down",
            json!({}),
        ),
        Err(SubmitError::ShardFailed(_)) => fail(
            &server.counts,
            StatusCode::SERVICE_UNAVAILABLE,
            "shard_failed",
            json!({}),
        ),
    })
}

/// The answer to a rejected buy (`now_ns` on the sale's clock, for "opens in").
pub(super) fn rejected(server: &Server, sku: SkuId, reason: RejectReason, now_ns: u64) -> Response {
    let extra = match reason {
        RejectReason::Duplicate(order) => json!({ "order": order.0 }),
        RejectReason::InvalidQuantity => json!({
            "field": "qty",
            "error": "qty must be at least 1 and within the buyer's limit",
        }),
        RejectReason::NotOpenYet => match server.catalog.sku(sku) {
            Some(spec) => {
                let wait_ns = spec.window.opens_at_ns.saturating_sub(now_ns);
                json!({ "opens_in_ms": wait_ns / 1_000_000 })
            }
            None => json!({}),
        },
        _ => json!({}),
    };
    fail(
        &server.counts,
        answer::reject_status(reason),
        reason.name(),
        extra,
    )
}

/// A SKU's public state: labels, policy, window, levels.
pub(super) fn sale_json(server: &Server, now_ns: u64, sale: &LiveSale) -> Value {
    let levels = &sale.levels;
    let Some(spec) = server.catalog.sku(levels.id) else {
        return json!({ "sku": levels.id.0 });
    };
    let window = sale.window;
    let limit = spec
        .group
        .and_then(|group| server.catalog.group(group))
        .map_or(spec.limit_per_buyer, |group| {
            group.limit_per_buyer.min(spec.limit_per_buyer)
        });
    let time = |ns: u64| super::catalog_file::wall_time(server.epoch, ns);
    json!({
        "sku": levels.id.0,
        "product": spec.product,
        "variant": spec.variant,
        "policy": server.catalog.policy_of(spec).name(),
        "state": sale.state(now_ns),
        "stock": levels.stock,
        "available": levels.available,
        "held": levels.held,
        "sold": levels.sold,
        "waiting": levels.waiting,
        // No limit (`u32::MAX` in the catalog) is null, as a window that never closes is.
        "limit_per_buyer": (limit != u32::MAX).then_some(limit),
        "opens_at": time(window.opens_at_ns),
        "closes_at": (window.closes_at_ns != u64::MAX).then(|| time(window.closes_at_ns)),
        "opens_in_ms": window.opens_at_ns.saturating_sub(now_ns) / 1_000_000,
        "closes_in_ms": (window.closes_at_ns != u64::MAX)
            .then(|| window.closes_at_ns.saturating_sub(now_ns) / 1_000_000),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesParams {
    after: Option<u32>,
    limit: Option<usize>,
}

/// The field a query string's refusal names: an unknown one in backticks, one whose value
/// does not parse as `field: why` after the query string.
fn query_field(message: &str) -> String {
    if let Some(quoted) = message.split('`').nth(1) {
        return quoted.to_owned();
    }
    message
        .rsplit("query string: ")
        .next()
        .and_then(|rest| rest.split_once(':'))
        .map(|(field, _)| field.trim())
        .filter(|field| !field.is_empty() && !field.contains(' '))
        .unwrap_or("query")
        .to_owned()
}

/// How many SKUs a page of `GET /sales` holds when the request does not say, and at most.
const SALES_PAGE: usize = 1_000;
const SALES_PAGE_MAX: usize = 10_000;

/// The page `GET /sales` asks for: the SKU it starts after (which must be in the catalog)
/// and how many SKUs, or the 400 naming the field.
pub(super) fn sales_params(
    server: &Server,
    params: Result<Query<SalesParams>, QueryRejection>,
) -> Result<(Option<SkuId>, usize), Response> {
    let Query(params) = params.map_err(|rejection| {
        let message = rejection.body_text();
        bad_request(&server.counts, &query_field(&message), message)
    })?;
    let after = params.after.map(SkuId);
    if let Some(sku) = after
        && server.catalog.index_of(sku).is_none()
    {
        return Err(bad_request(
            &server.counts,
            "after",
            format!("SKU {} is not in the catalog", sku.0),
        ));
    }
    let limit = params.limit.unwrap_or(SALES_PAGE).clamp(1, SALES_PAGE_MAX);
    Ok((after, limit))
}

/// A page of `GET /sales`: its SKUs, and `next` (the page's last SKU, to ask `after`) when
/// the catalog has more after it.
pub(super) fn sales_page_json(server: &Server, now_ns: u64, page: &[LiveSale]) -> Value {
    let sales: Vec<Value> = page
        .iter()
        .map(|sale| sale_json(server, now_ns, sale))
        .collect();
    let last = page.last().map(|sale| sale.levels.id);
    let next = last.filter(|&sku| {
        server
            .catalog
            .skus()
            .last()
            .is_some_and(|end| end.id != sku)
    });
    json!({ "sales": sales, "next": next.map(|sku| sku.0) })
}

async fn sales(
    State(server): Shared,
    params: Result<Query<SalesParams>, QueryRejection>,
) -> Response {
    let running = match running(&server) {
        Ok(running) => running,
        Err(response) => return response,
    };
    let (after, limit) = match sales_params(&server, params) {
        Ok(page) => page,
        Err(response) => return response,
    };
    let control = running.engine.control();
    let now_ns = running.engine.now_ns();
    match blocking(move || control.sales_page(after, limit)).await {
        Ok(page) => ok(&server.counts, sales_page_json(&server, now_ns, &page)),
        Err(error) => control_failed(&server, error),
    }
}

async fn sale(State(server): Shared, Path(sku): Path<String>) -> Response {
    let (running, sku) =
        match running(&server).and_then(|running| Ok((running, path_sku(&server, &sku)?))) {
            Ok(found) => found,
            Err(response) => return response,
        };
    let control = running.engine.control();
    let now_ns = running.engine.now_ns();
    match blocking(move || control.sale(sku)).await {
        Ok(levels) => ok(&server.counts, sale_json(&server, now_ns, &levels)),
        Err(error) => control_failed(&server, error),
    }
}

/// The order named in the path, if the caller may see it (its buyer, an operator, or
/// anyone in demo mode).
async fn owned_order(
    server: &Server,
    id: &str,
    headers: &HeaderMap,
) -> Result<(flashsale::Control, flashsale::OrderView), Response> {
    let running = running(server)?;
    let id = OrderId(path_number(server, "id", id)?);
    let caller = order_caller(server, headers)?;
    let control = running.engine.control();
    let asking = control.clone();
    let view = blocking(move || asking.order(id))
        .await
        .map_err(|error| control_failed(server, error))?;
    check_owner(server, caller, &view)?;
    Ok((control, view))
}

/// Who asks about an order: `None` for an operator or in demo mode (anyone may see any
/// order), else the authenticated buyer; or the 401.
pub(super) fn order_caller(server: &Server, headers: &HeaderMap) -> Result<Option<u64>, Response> {
    if is_operator(server, headers) {
        Ok(None)
    } else {
        buyer(server, headers)
    }
}

/// The 403 if `caller` (from [`order_caller`]) is not the order's buyer.
pub(super) fn check_owner(
    server: &Server,
    caller: Option<u64>,
    view: &flashsale::OrderView,
) -> Result<(), Response> {
    if caller.is_some_and(|caller| caller != view.user.0) {
        return Err(fail(
            &server.counts,
            StatusCode::FORBIDDEN,
            "not_your_order",
            json!({}),
        ));
    }
    Ok(())
}

/// An order's JSON (`now_ns` on the sale's clock, for "pay in").
pub(super) fn order_json(server: &Server, view: &flashsale::OrderView, now_ns: u64) -> Value {
    let mut body = json!({
        "order": view.id.0,
        "sku": view.sku.0,
        "user": view.user.0,
        "qty": view.quantity,
        "state": view.status.name(),
    });
    if let OrderStatus::Held {
        pay_by_ns: Some(pay_by),
    } = view.status
    {
        body["pay_by"] = json!(super::catalog_file::wall_time(server.epoch, pay_by));
        body["pay_in_ms"] = json!(pay_by.saturating_sub(now_ns) / 1_000_000);
    }
    body
}

async fn order(State(server): Shared, Path(id): Path<String>, headers: HeaderMap) -> Response {
    match owned_order(&server, &id, &headers).await {
        Ok((control, view)) => ok(&server.counts, order_json(&server, &view, control.now_ns())),
        Err(response) => response,
    }
}

async fn pay(State(server): Shared, Path(id): Path<String>, headers: HeaderMap) -> Response {
    change_order(&server, &id, &headers, true).await
}

async fn cancel(State(server): Shared, Path(id): Path<String>, headers: HeaderMap) -> Response {
    change_order(&server, &id, &headers, false).await
}

async fn change_order(server: &Server, id: &str, headers: &HeaderMap, pay: bool) -> Response {
    let (control, view) = match owned_order(server, id, headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let order = view.id;
    let now_ns = control.now_ns();
    let asking = control.clone();
    let changed = blocking(move || {
        if pay {
            control.pay(order)
        } else {
            control.cancel(order)
        }?;
        asking.order(order)
    })
    .await;
    match changed {
        Ok(view) => ok(&server.counts, order_json(server, &view, now_ns)),
        Err(error) => control_failed(server, error),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedParams {
    after: Option<String>,
    limit: Option<usize>,
    wait_ms: Option<u64>,
}

/// Longest a long poll waits, and the most events a page holds.
const FEED_WAIT_MAX: Duration = Duration::from_secs(60);
const FEED_PAGE_MAX: usize = 10_000;

async fn events(
    State(server): Shared,
    headers: HeaderMap,
    params: Result<Query<FeedParams>, QueryRejection>,
) -> Response {
    let running = match running(&server) {
        Ok(running) => running,
        Err(response) => return response,
    };
    feed_page(&server, &running.feed, &headers, params, Duration::ZERO).await
}

/// A page of `feed` after the request's cursor (`GET /orders/events`), for the operator.
/// A cursor past the feed's end is waited for up to `patience` (a cluster's gateways
/// follow the logs a few milliseconds apart), then refused.
pub async fn feed_page(
    server: &Server,
    feed: &Feed,
    headers: &HeaderMap,
    params: Result<Query<FeedParams>, QueryRejection>,
    patience: Duration,
) -> Response {
    let open = matches!(server.buyers, Buyers::Demo) && server.admin_token.is_none();
    if !open && server.admin_token.is_none() {
        return fail(
            &server.counts,
            StatusCode::FORBIDDEN,
            "admin_disabled",
            json!({ "error": "buyers are authenticated: the event feed needs --admin-token" }),
        );
    }
    if !open && !is_operator(server, headers) {
        return fail(
            &server.counts,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            json!({ "error": "the event feed needs the operator token" }),
        );
    }
    let Query(params) = match params {
        Ok(params) => params,
        Err(rejection) => {
            let message = rejection.body_text();
            return bad_request(&server.counts, &query_field(&message), message);
        }
    };
    let positions = match feed.cursor(params.after.as_deref()) {
        Ok(positions) => positions,
        Err(CursorError::Ahead(positions))
            if !patience.is_zero() && feed.reach(&positions, patience).await =>
        {
            positions
        }
        Err(CursorError::Malformed) => {
            return bad_request(
                &server.counts,
                "after",
                format!(
                    "a cursor is one plain number per shard, comma-separated ({} here)",
                    feed.lengths().len()
                ),
            );
        }
        Err(CursorError::Ahead(_)) => {
            return bad_request(
                &server.counts,
                "after",
                "the cursor is past the end of this feed (another data directory's?)",
            );
        }
    };
    let limit = params.limit.unwrap_or(1_000).clamp(1, FEED_PAGE_MAX);
    let wait = Duration::from_millis(params.wait_ms.unwrap_or(25_000)).min(FEED_WAIT_MAX);
    let stop = super::until_stopping(server.stopping.clone());
    let (page, positions) = feed.after(positions, limit, wait, stop).await;
    let events: Vec<Value> = page
        .iter()
        .map(|(shard, event)| {
            json!({
                "shard": shard,
                "sequence": event.sequence,
                "kind": event.kind.name(),
                "order": event.order.0,
                "user": event.user.0,
                "sku": event.sku.0,
                "qty": event.quantity,
            })
        })
        .collect();
    ok(
        &server.counts,
        json!({ "events": events, "cursor": Feed::cursor_text(&positions) }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Units {
    units: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Window {
    #[serde(default)]
    opens: Option<String>,
    #[serde(default)]
    closes: Option<String>,
}

async fn admin(
    State(server): Shared,
    Path((sku, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match try_admin(&server, &sku, &action, &headers, body).await {
        Ok(response) | Err(response) => response,
    }
}

/// An operator's change to a SKU's sale, checked.
pub(super) enum AdminAction {
    Restock(u32),
    Reduce(u32),
    Close,
    /// A new window: the fields given (ns on the sale clock), or for a reopen, open now
    /// with no end.
    Window {
        opens: Option<u64>,
        closes: Option<u64>,
        reopen: bool,
    },
}

impl AdminAction {
    /// The window a `Window` action sets, given the window now.
    pub(super) fn window(
        opens: Option<u64>,
        closes: Option<u64>,
        reopen: bool,
        current: SaleWindow,
        now_ns: u64,
    ) -> SaleWindow {
        SaleWindow {
            opens_at_ns: opens.unwrap_or(if reopen {
                current.opens_at_ns.min(now_ns)
            } else {
                current.opens_at_ns
            }),
            closes_at_ns: closes.unwrap_or(if reopen {
                u64::MAX
            } else {
                current.closes_at_ns
            }),
        }
    }
}

/// An operator request, checked: the action is known, operator routes are on, the token
/// is right, the SKU and the body are well-formed.
pub(super) async fn admin_request(
    server: &Server,
    sku: &str,
    action: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(SkuId, AdminAction), Response> {
    if !["restock", "reduce", "window", "close", "reopen"].contains(&action) {
        return Err(fail(
            &server.counts,
            StatusCode::NOT_FOUND,
            "not_found",
            json!({}),
        ));
    }
    if server.admin_token.is_none() {
        return Err(fail(
            &server.counts,
            StatusCode::FORBIDDEN,
            "admin_disabled",
            json!({ "error": "operator routes are off: start serve with --admin-token" }),
        ));
    }
    if !is_operator(server, headers) {
        return Err(fail(
            &server.counts,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            json!({ "error": "the operator token is missing or wrong" }),
        ));
    }
    let sku = path_sku(server, sku)?;
    let bytes = read_body(server, headers, body).await?;
    let instant = |field: &str, text: &str| -> Result<u64, Response> {
        super::catalog_file::instant(text, server.epoch)
            .map_err(|why| bad_request(&server.counts, field, why))
    };
    let action = match action {
        "restock" => AdminAction::Restock(parse::<Units>(server, &bytes)?.units),
        "reduce" => AdminAction::Reduce(parse::<Units>(server, &bytes)?.units),
        "close" => {
            let Empty {} = parse(server, &bytes)?;
            AdminAction::Close
        }
        _ => {
            let window: Window = parse(server, &bytes)?;
            AdminAction::Window {
                opens: window
                    .opens
                    .as_deref()
                    .map(|text| instant("opens", text))
                    .transpose()?,
                closes: window
                    .closes
                    .as_deref()
                    .map(|text| instant("closes", text))
                    .transpose()?,
                reopen: action == "reopen",
            }
        }
    };
    Ok((sku, action))
}

async fn try_admin(
    server: &Arc<Server>,
    sku: &str,
    action: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let (sku, action) = admin_request(server, sku, action, headers, body).await?;
    let running = running(server)?;
    let control = running.engine.control();
    let call: Box<dyn FnOnce() -> Result<(), ControlError> + Send> = match action {
        AdminAction::Restock(units) => Box::new(move || control.restock(sku, units)),
        AdminAction::Reduce(units) => Box::new(move || control.reduce(sku, units)),
        AdminAction::Close => Box::new(move || control.close_sale(sku)),
        AdminAction::Window {
            opens,
            closes,
            reopen,
        } => {
            // The window as it is now (an operator may have moved it).
            let asking = control.clone();
            let current = blocking(move || asking.sale(sku))
                .await
                .map_err(|error| control_failed(server, error))?
                .window;
            let window =
                AdminAction::window(opens, closes, reopen, current, running.engine.now_ns());
            Box::new(move || control.set_window(sku, window))
        }
    };
    blocking(call)
        .await
        .map_err(|error| control_failed(server, error))?;
    let control = running.engine.control();
    let now_ns = running.engine.now_ns();
    let levels = blocking(move || control.sale(sku))
        .await
        .map_err(|error| control_failed(server, error))?;
    Ok(ok(&server.counts, sale_json(server, now_ns, &levels)))
}

pub(super) async fn healthz(State(server): Shared) -> Response {
    ok(&server.counts, json!({ "status": "up" }))
}

async fn readyz(State(server): Shared) -> Response {
    let running = match running(&server) {
        Ok(running) => running,
        Err(response) => return response,
    };
    let control = running.engine.control();
    match blocking(move || control.answering()).await {
        Ok(()) => ok(&server.counts, json!({ "status": "ready" })),
        Err(error) => control_failed(&server, error),
    }
}
