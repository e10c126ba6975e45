//! `flashsale serve --nats`: the same HTTP API as `serve` alone, as a stateless gateway of
//! a sale on NATS JetStream. Buys go into the partitions' logs in batches and are answered
//! when their partition's leader has applied them; payments, cancellations and operator
//! changes are logged once each; reads (`GET /sales`, `/sales/{sku}`, `/orders/{id}`) are
//! answered by the partition's leader from its state. Nothing is kept here: any number of
//! gateways serve one sale, and one can die at any moment (a buyer whose answer it held
//! retries with the same key through another and gets the same order).
//!
//! With `--feed`, a gateway also serves the order event feed: a follower of every
//! partition's log ([`flashsale::cluster::follow`]), on a thread and a NATS connection of
//! its own, hands each partition's events to a [`Feed`] as `serve` alone does from its
//! journals. The events come from the logs alone, so every gateway with `--feed` holds
//! the same events at the same positions, and a cursor from one means the same on another
//! or after a restart. Without `--feed` the feed answers 501 `not_in_cluster`.
//!
//! The live page (`GET /`) shows each SKU's levels and each pool as the partitions' leaders
//! answer them, which are the whole sale's, beside this gateway's own answers, rates and
//! latency (other gateways answer buyers too); its snapshots say so with `"scope":
//! "gateway"`. Its count of orders is the sale's with `--feed`, else this gateway's.
#![allow(
    clippy::result_large_err,
    reason = "the Err of a check is the HTTP answer itself, 128 bytes, on the refusal path"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use flashsale::Catalog;
use flashsale::cluster::nats::{self, Opened, SaleOnNats};
use flashsale::cluster::wire::Control;
use flashsale::cluster::{
    EventSink, Gateway, GatewayConfig, GatewayError, NodeConfig, PartitionStatus, follow,
};
use flashsale::core::Applied;
use flashsale::{ControlError, OrderId, OrderStatus, OrderView, Outcome};
use serde_json::{Map, Value, json};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use super::answer::{self, fail, ok};
use super::feed::Feed;
use super::routes::{
    self, AdminAction, SalesParams, admin_request, buy_request, confirmed, order_json, path_number,
    path_sku, rejected, sale_json, sales_page_json, sales_params,
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
    // Settings the gateway would refuse, and a catalog that does not fit the partitions,
    // before anything connects (opening the sale creates a stream per partition).
    gateway_config(args)
        .check()
        .map_err(|error| (2, error.to_string()))?;
    crate::node::check_catalog_before_opening(args.catalog.as_deref(), args.partitions)
        .map(drop)
        .map_err(|why| (2, why))?;
    runtime.block_on(async {
        let name = format!("gateway-{}", std::process::id());
        let client = nats::connect(urls, &name)
            .await
            .map_err(|error| (1, error.to_string()))?;
        nats::check_jetstream(&client, nats::JETSTREAM_WITHIN)
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
                    note!("flashsale serve: {error}; retrying");
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
    runtime
        .block_on(Gateway::connect_opened(
            opening.client,
            opening.sale,
            opening.opened,
            catalog.clone(),
            gateway_config(args),
        ))
        .map_err(|error| (1, error.to_string()))
}

/// The gateway's settings from the command line.
fn gateway_config(args: &ServeArgs) -> GatewayConfig {
    GatewayConfig {
        linger: args.linger,
        max_quantity: args.max_quantity,
        ..GatewayConfig::default()
    }
}

/// Every route of a gateway.
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
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(super::metrics::metrics))
        .route("/", get(super::dashboard::page))
        .route("/events", get(super::dashboard::events))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .with_state(server)
}

/// The sale now, as the page shows it on a cluster's gateway: each SKU's levels as its
/// partition's leader answers them (the whole sale's), beside this gateway's own answers
/// and latency (`"scope": "gateway"`: other gateways answer buyers too, so the rates are
/// this gateway's share), and the pools as their leaders have them. The count of orders is
/// the whole sale's with `--feed` (its confirmations in the logs), else this gateway's
/// (`"confirmed_scope"` says which).
pub async fn live_snapshot(
    server: &Arc<Server>,
    gateway: &Gateway,
    answers: Map<String, Value>,
    latency: Value,
) -> Value {
    // With --feed, the sale's orders (its confirmations in the logs); else this gateway's.
    let (confirmed, confirmed_scope) = match &server.followed {
        Some(followed) => (json!(followed.feed().confirmed()), "sale"),
        None => (
            answers.get("confirmed").cloned().unwrap_or(json!(0)),
            "gateway",
        ),
    };
    let read = futures_util::future::try_join(
        gateway.sales_page(None, super::dashboard::SKUS_SHOWN),
        gateway.pools(),
    )
    .await;
    let (sales, pools) = match read {
        Ok((sales, pools)) => (sales.unwrap_or_default(), pools),
        Err(error) => {
            let state = match error {
                GatewayError::Unanswered => "unanswered",
                GatewayError::ShutDown => "shut_down",
            };
            return json!({ "state": state, "scope": "gateway", "answers": answers, "latency": latency });
        }
    };
    let now_ns = gateway.now_ns();
    let skus: Vec<Value> = sales
        .iter()
        .map(|sale| sale_json(server, now_ns, sale))
        .collect();
    let pools: Vec<Value> = pools
        .iter()
        .map(|pool| super::dashboard::pool_json(now_ns, pool))
        .collect();
    json!({
        "state": "ready",
        "scope": "gateway",
        "pools": pools,
        "now": super::catalog_file::wall_time(server.epoch, now_ns),
        "at_ms": now_ns as f64 / 1e6,
        "skus": skus,
        "skus_total": server.catalog.skus().len(),
        "answers": answers,
        "confirmed": confirmed,
        "confirmed_scope": confirmed_scope,
        "latency": latency,
        "events": server.followed.as_ref().map(|followed| followed.feed().lengths().iter().sum::<usize>()),
    })
}

/// How long a cursor from a gateway whose follower is further on is waited for.
const FEED_PATIENCE: Duration = Duration::from_secs(2);

/// `GET /orders/events`, with `--feed`.
async fn events(
    State(server): Shared,
    headers: HeaderMap,
    params: Result<axum::extract::Query<routes::FeedParams>, QueryRejection>,
) -> Response {
    let Some(followed) = &server.followed else {
        return fail(
            &server.counts,
            StatusCode::NOT_IMPLEMENTED,
            "not_in_cluster",
            json!({ "error": "this gateway does not follow the logs: start it with --feed for the order event feed" }),
        );
    };
    if !followed.caught_up() {
        return fail(
            &server.counts,
            StatusCode::SERVICE_UNAVAILABLE,
            "recovering",
            json!({ "error": "this gateway is still reading the partitions' logs for the order feed" }),
        );
    }
    routes::feed_page(&server, followed.feed(), &headers, params, FEED_PATIENCE).await
}

/// With `--feed`: the order event feed, and whether its follower has caught up with the
/// logs as they were when it started (until then the feed answers 503 `recovering`).
pub struct FollowedFeed {
    feed: Arc<Feed>,
    caught_up: Arc<AtomicBool>,
}

impl FollowedFeed {
    /// The feed.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Whether the follower has applied every entry the logs held when it started.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Starts the follower on a thread of its own, which connects to NATS (retrying while
    /// it cannot) and follows the logs until `stopping` turns true, starting again from
    /// the first entries if its follower fails.
    pub fn start(
        args: &ServeArgs,
        catalog: &Catalog,
        stopping: watch::Receiver<bool>,
    ) -> Result<Self, Failure> {
        let urls = args.nats.clone().unwrap_or_default();
        let sale = SaleOnNats::new(&args.sale, args.partitions, args.replicas)
            .map_err(|error| (2, error.to_string()))?;
        let feed = Feed::new(usize::from(args.partitions));
        let caught_up = Arc::new(AtomicBool::new(false));
        let config = NodeConfig {
            id: format!("feed-{}", std::process::id()),
            max_quantity: args.max_quantity,
            // Within its range (clap checked it), so it fits a usize.
            order_capacity: args.feed_order_capacity.map(|orders| orders as usize),
            ..NodeConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| (1, format!("cannot start the feed's runtime: {error}")))?;
        let follower = Follower {
            urls,
            sale,
            catalog: catalog.clone(),
            config,
            feed: feed.clone(),
            caught_up: caught_up.clone(),
        };
        std::thread::Builder::new()
            .name("feed".to_owned())
            .spawn(move || runtime.block_on(follower.run(stopping)))
            .map_err(|error| (1, format!("cannot start the feed's thread: {error}")))?;
        Ok(Self { feed, caught_up })
    }
}

/// What the feed's thread runs.
struct Follower {
    urls: String,
    sale: SaleOnNats,
    catalog: Catalog,
    config: NodeConfig,
    feed: Arc<Feed>,
    caught_up: Arc<AtomicBool>,
}

impl Follower {
    /// Follows until `stopping` turns true, starting again a second after a failure.
    async fn run(self, mut stopping: watch::Receiver<bool>) {
        loop {
            if let Err(error) = self.follow_once(stopping.clone()).await {
                note!("flashsale serve: the order feed's follower: {error}; starting again");
            }
            if *stopping.borrow() {
                return;
            }
            tokio::select! {
                _ = stopping.changed() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Connects, opens the sale and follows its logs from their first entries. Events a
    /// run before this one already added are not added again (every run hands over the
    /// same events in the same order).
    async fn follow_once(&self, stopping: watch::Receiver<bool>) -> Result<(), String> {
        let name = format!("feed-{}", std::process::id());
        let client = nats::connect(&self.urls, &name)
            .await
            .map_err(|error| error.to_string())?;
        let opened = self
            .sale
            .open(client.clone(), Duration::from_secs(2))
            .await
            .map_err(|error| error.to_string())?;
        let ends = opened.log_ends().await.map_err(|error| error.to_string())?;
        let sinks = (0..usize::from(self.sale.partitions()))
            .map(|partition| Box::new(self.feed.resuming_sink(partition)) as EventSink)
            .collect();
        let (status, mut progress) = watch::channel(Vec::<PartitionStatus>::new());
        let caught_up = self.caught_up.clone();
        let watching = tokio::spawn(async move {
            loop {
                let current = {
                    let status = progress.borrow_and_update();
                    status.len() == ends.len()
                        && status.iter().zip(&ends).all(|(at, &end)| at.applied >= end)
                };
                if current {
                    caught_up.store(true, Ordering::Release);
                    return;
                }
                if progress.changed().await.is_err() {
                    return;
                }
            }
        });
        let followed = follow(
            client,
            self.sale.clone(),
            opened,
            self.catalog.clone(),
            self.config.clone(),
            sinks,
            Some(status),
            stopping,
        )
        .await;
        watching.abort();
        followed.map_err(|error| error.to_string())
    }
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

/// A page of the sale's SKUs, as `serve` alone answers it: each partition's leader is
/// asked for its SKUs of the page.
async fn sales(
    State(server): Shared,
    params: Result<Query<SalesParams>, QueryRejection>,
) -> Response {
    let gateway = match gateway(&server) {
        Ok(gateway) => gateway,
        Err(response) => return response,
    };
    let (after, limit) = match sales_params(&server, params) {
        Ok(page) => page,
        Err(response) => return response,
    };
    match gateway.sales_page(after, limit).await {
        Ok(Some(page)) => ok(
            &server.counts,
            sales_page_json(&server, gateway.now_ns(), &page),
        ),
        // The gateway's catalog is the server's, which `sales_params` checked `after` in.
        Ok(None) => answer::bad_request(&server.counts, "after", "not in the catalog"),
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
    match gateway.answering().await {
        Ok(()) => ok(&server.counts, json!({ "status": "ready" })),
        Err(error) => gateway_failed(&server, error),
    }
}
