//! `flashsale serve --nats`: the same HTTP API as `serve` alone, as a stateless gateway of
//! a sale on NATS JetStream. Buys go into the partitions' logs in batches and are answered
//! when their partition's leader has applied them; payments, cancellations and operator
//! changes are logged once each; reads (`GET /sales`, `/sales/{sku}`, `/orders/{id}`) are
//! answered by the partition's leader from its state. Nothing is kept here: any number of
//! gateways serve one sale, and one can die at any moment (a buyer whose answer it held
//! retries with the same key through another and gets the same order).
//!
//! Not here: the order event feed and the live page, which read one process's engine
//! (`serve` alone has them); they answer 501 `not_in_cluster`.
#![allow(
    clippy::result_large_err,
    reason = "the Err of a check is the HTTP answer itself, 128 bytes, on the refusal path"
)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{any, get, post};
use flashsale::Catalog;
use flashsale::cluster::nats::{self, Opened, SaleOnNats};
use flashsale::cluster::wire::Control;
use flashsale::cluster::{Gateway, GatewayConfig, GatewayError};
use flashsale::core::Applied;
use flashsale::{ControlError, OrderId, OrderStatus, OrderView, Outcome};
use serde_json::{Value, json};
use tokio::runtime::Runtime;

use super::answer::{self, fail, ok};
use super::routes::{
    self, AdminAction, admin_request, buy_request, confirmed, order_json, path_number, path_sku,
    rejected, sale_json,
};
use super::{Failure, ServeArgs, Server};

type Shared = State<Arc<Server>>;

/// A sale on NATS, opened (its epoch known) but no gateway yet.
pub struct Opening {
    client: async_nats::Client,
    sale: SaleOnNats,
    opened: Opened,
}

impl Opening {
    /// The sale clock's zero, as the first of its nodes and gateways set it.
    pub fn epoch(&self) -> SystemTime {
        self.opened.epoch()
    }
}

/// Connects to NATS and opens the sale (retrying for 30 s while the cluster elects its
/// leaders), if `--nats` was given.
pub fn open(args: &ServeArgs, runtime: &Runtime) -> Result<Option<Opening>, Failure> {
    let Some(urls) = &args.nats else {
        return Ok(None);
    };
    let sale = SaleOnNats::new(&args.sale, args.partitions, args.replicas)
        .map_err(|error| (2, error.to_string()))?;
    runtime.block_on(async {
        let name = format!("gateway-{}", std::process::id());
        let client = nats::connect(urls, &name)
            .await
            .map_err(|error| (1, error.to_string()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match sale.open(client.clone(), Duration::from_secs(2)).await {
                Ok(opened) => {
                    return Ok(Some(Opening {
                        client,
                        sale,
                        opened,
                    }));
                }
                Err(error) if tokio::time::Instant::now() < deadline => {
                    eprintln!("flashsale serve: {error}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => return Err((1, error.to_string())),
            }
        }
    })
}

/// The gateway of an opened sale.
pub fn connect(
    args: &ServeArgs,
    runtime: &Runtime,
    opening: Opening,
    catalog: &Catalog,
) -> Result<Gateway, Failure> {
    let config = GatewayConfig {
        linger: args.linger,
        max_quantity: args.max_quantity,
        ..GatewayConfig::default()
    };
    runtime
        .block_on(Gateway::connect_opened(
            opening.client,
            opening.sale,
            opening.opened,
            catalog.clone(),
            config,
        ))
        .map_err(|error| (1, error.to_string()))
}

/// Every route of a gateway.
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/sales", get(sales))
        .route("/sales/{sku}", get(sale))
        .route("/sales/{sku}/buy", post(buy))
        .route("/orders/events", any(not_in_cluster))
        .route("/orders/{id}", get(order))
        .route("/orders/{id}/pay", post(pay))
        .route("/orders/{id}/cancel", post(cancel))
        .route("/admin/sales/{sku}/{action}", post(admin))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(super::metrics::metrics))
        .route("/", any(not_in_cluster))
        .route("/events", any(not_in_cluster))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .with_state(server)
}

async fn not_in_cluster(State(server): Shared) -> Response {
    fail(
        &server.counts,
        StatusCode::NOT_IMPLEMENTED,
        "not_in_cluster",
        json!({ "error": "the order feed and the live page read one process's engine: run `flashsale serve` alone for them" }),
    )
}

/// The gateway, or the 503 to answer while it connects.
fn gateway(server: &Server) -> Result<&Gateway, Response> {
    server.gateway.get().ok_or_else(|| {
        fail(
            &server.counts,
            StatusCode::SERVICE_UNAVAILABLE,
            "recovering",
            json!({}),
        )
    })
}

fn gateway_failed(server: &Server, error: GatewayError) -> Response {
    match error {
        GatewayError::Unanswered => fail(
            &server.counts,
            StatusCode::SERVICE_UNAVAILABLE,
            "unanswered",
            json!({ "error": "the cluster did not answer in time; retrying with the same key is safe" }),
        ),
        GatewayError::ShutDown => fail(
            &server.counts,
            StatusCode::SERVICE_UNAVAILABLE,
            "shut_down",
            json!({}),
        ),
    }
}

fn control_failed(server: &Server, error: ControlError) -> Response {
    let (status, reason, extra) = answer::control_error(error);
    fail(&server.counts, status, reason, extra)
}

async fn buy(
    State(server): Shared,
    Path(sku): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let gateway = match gateway(&server) {
        Ok(gateway) => gateway,
        Err(response) => return response,
    };
    let (intent, wait) = match buy_request(&server, &sku, &headers, body).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let start = Instant::now();
    let decided = gateway.buy(intent, wait).await;
    let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    server.latency.lock().saturating_record(nanos.max(1));
    match decided {
        Ok(decided) => match decided.outcome {
            Outcome::Confirmed(order) => confirmed(&server, &order),
            Outcome::Rejected { reason, .. } => {
                rejected(&server, intent.sku, reason, gateway.now_ns())
            }
        },
        Err(error) => gateway_failed(&server, error),
    }
}

async fn sales(State(server): Shared) -> Response {
    let gateway = match gateway(&server) {
        Ok(gateway) => gateway,
        Err(response) => return response,
    };
    match gateway.sales().await {
        Ok(sales) => {
            let now_ns = gateway.now_ns();
            let sales: Vec<Value> = sales
                .iter()
                .map(|sale| sale_json(&server, now_ns, sale))
                .collect();
            ok(&server.counts, json!({ "sales": sales }))
        }
        Err(error) => gateway_failed(&server, error),
    }
}

/// A SKU's sale as JSON, or the answer saying why not.
async fn sale_now(server: &Server, gateway: &Gateway, sku: &str) -> Response {
    let sku = match path_sku(server, sku) {
        Ok(sku) => sku,
        Err(response) => return response,
    };
    match gateway.sale(sku).await {
        Ok(Some(sale)) => ok(&server.counts, sale_json(server, gateway.now_ns(), &sale)),
        Ok(None) => control_failed(server, ControlError::UnknownSku(sku)),
        Err(error) => gateway_failed(server, error),
    }
}

async fn sale(State(server): Shared, Path(sku): Path<String>) -> Response {
    match gateway(&server) {
        Ok(gateway) => sale_now(&server, gateway, &sku).await,
        Err(response) => response,
    }
}

/// The order named in the path, if the caller may see it (its buyer, an operator, or
/// anyone in demo mode).
async fn owned_order<'a>(
    server: &'a Server,
    id: &str,
    headers: &HeaderMap,
) -> Result<(&'a Gateway, OrderView), Response> {
    let gateway = gateway(server)?;
    let id = OrderId(path_number(server, "id", id)?);
    let caller = routes::order_caller(server, headers)?;
    let view = gateway
        .order(id)
        .await
        .map_err(|error| gateway_failed(server, error))?
        .ok_or_else(|| control_failed(server, ControlError::UnknownOrder(id)))?;
    routes::check_owner(server, caller, &view)?;
    Ok((gateway, view))
}

async fn order(State(server): Shared, Path(id): Path<String>, headers: HeaderMap) -> Response {
    match owned_order(&server, &id, &headers).await {
        Ok((gateway, view)) => ok(&server.counts, order_json(&server, &view, gateway.now_ns())),
        Err(response) => response,
    }
}

async fn pay(State(server): Shared, Path(id): Path<String>, headers: HeaderMap) -> Response {
    change_order(&server, &id, &headers, true).await
}

async fn cancel(State(server): Shared, Path(id): Path<String>, headers: HeaderMap) -> Response {
    change_order(&server, &id, &headers, false).await
}

/// Logs a command and answers what it did.
async fn apply(server: &Server, gateway: &Gateway, control: Control) -> Result<(), Response> {
    match gateway.control(control).await {
        Ok(Applied::Done { .. }) => Ok(()),
        Ok(Applied::Refused { error, .. }) => Err(control_failed(server, error)),
        Ok(other) => Err(fail(
            &server.counts,
            StatusCode::SERVICE_UNAVAILABLE,
            "unanswered",
            json!({ "error": format!("the cluster answered {other:?} to a command") }),
        )),
        Err(error) => Err(gateway_failed(server, error)),
    }
}

async fn change_order(server: &Server, id: &str, headers: &HeaderMap, pay: bool) -> Response {
    let (gateway, mut view) = match owned_order(server, id, headers).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let control = if pay {
        Control::Pay(view.id)
    } else {
        Control::Cancel(view.id)
    };
    if let Err(response) = apply(server, gateway, control).await {
        return response;
    }
    // Done: the order is now what the command made it.
    view.status = if pay {
        OrderStatus::Paid
    } else {
        OrderStatus::Cancelled
    };
    ok(&server.counts, order_json(server, &view, gateway.now_ns()))
}

async fn admin(
    State(server): Shared,
    Path((sku, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (sku_id, action) = match admin_request(&server, &sku, &action, &headers, body).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let gateway = match gateway(&server) {
        Ok(gateway) => gateway,
        Err(response) => return response,
    };
    let control = match action {
        AdminAction::Restock(units) => Control::Restock { sku: sku_id, units },
        AdminAction::Reduce(units) => Control::Reduce { sku: sku_id, units },
        AdminAction::Close => Control::Close(sku_id),
        AdminAction::Window {
            opens,
            closes,
            reopen,
        } => {
            // The window as it is now (an operator may have moved it).
            let current = match gateway.sale(sku_id).await {
                Ok(Some(sale)) => sale.window,
                Ok(None) => return control_failed(&server, ControlError::UnknownSku(sku_id)),
                Err(error) => return gateway_failed(&server, error),
            };
            let window = AdminAction::window(opens, closes, reopen, current, gateway.now_ns());
            Control::SetWindow {
                sku: sku_id,
                window,
            }
        }
    };
    if let Err(response) = apply(&server, gateway, control).await {
        return response;
    }
    sale_now(&server, gateway, &sku).await
}

async fn readyz(State(server): Shared) -> Response {
    let gateway = match gateway(&server) {
        Ok(gateway) => gateway,
        Err(response) => return response,
    };
    // Ready when every partition has a leader that answers.
    match gateway.sales().await {
        Ok(_) => ok(&server.counts, json!({ "status": "ready" })),
        Err(error) => gateway_failed(&server, error),
    }
}
