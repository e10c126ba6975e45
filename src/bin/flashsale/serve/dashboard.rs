//! The operator's live page: `GET /` serves one HTML page (no build step, no CDN: it is in
//! the binary), which follows the sale through `GET /events`, a server-sent event stream
//! of snapshots twice a second: units left per SKU (the first 200 SKUs), answers by reason (the page turns them
//! into rates), waitlists and pools, the engine's latency percentiles, the countdown to
//! each opening. With an operator token, `/events` needs it as `?token=` (an EventSource
//! cannot send headers); the page takes it from its address's `#token=` fragment, which
//! browsers do not send to the server. Every open page is sent the same snapshot when
//! they ask within a quarter second of each other, so many pages cost the shards what one
//! does.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Server;
use super::answer::fail;

/// The page.
const PAGE: &str = include_str!("page.html");

/// How often a snapshot goes out.
const EVERY: Duration = Duration::from_millis(500);

/// How long a snapshot is sent to every page that asks for one: pages open at once share
/// one read of the shards and one serialization (a hundred pages cost the shards what one
/// does).
const SHARED_FOR: Duration = Duration::from_millis(250);

/// The last snapshot sent (as its JSON text) and when it was taken.
#[derive(Default)]
pub struct LastSnapshot(tokio::sync::Mutex<Option<(Instant, Arc<str>)>>);

/// The snapshot to send now: the last one if it is younger than [`SHARED_FOR`], else a new
/// one (pages asking meanwhile wait for it rather than read the shards again).
async fn shared_snapshot(server: &Arc<Server>) -> Arc<str> {
    let mut last = server.live_page.0.lock().await;
    if let Some((taken, text)) = &*last
        && taken.elapsed() < SHARED_FOR
    {
        return text.clone();
    }
    let text: Arc<str> = snapshot(server).await.to_string().into();
    *last = Some((Instant::now(), text.clone()));
    text
}

/// The most SKUs a snapshot shows (the first in catalog order; `skus_total` says how many
/// the sale has). Reading every SKU of a large catalog twice a second per open page would
/// hold each shard's decisions for milliseconds each time; `GET /sales` pages through all.
pub const SKUS_SHOWN: usize = 200;

/// `GET /`.
pub async fn page(State(server): State<Arc<Server>>) -> Response {
    server.counts.count(200, "ok");
    Html(PAGE).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsParams {
    token: Option<String>,
    /// Snapshots to send before the stream ends (default: until the client goes). A
    /// headless browser that must finish loading the page uses it.
    limit: Option<u64>,
}

/// `GET /events`: a snapshot now and every half second, until the client goes or the
/// server stops.
pub async fn events(
    State(server): State<Arc<Server>>,
    params: Result<Query<EventsParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (given, limit) = match params {
        Ok(Query(params)) => (params.token, params.limit.unwrap_or(u64::MAX)),
        Err(_) => (None, u64::MAX),
    };
    let open = matches!(server.buyers, super::auth::Buyers::Demo) && server.admin_token.is_none();
    if !open {
        let Some(token) = &server.admin_token else {
            return fail(
                &server.counts,
                StatusCode::FORBIDDEN,
                "admin_disabled",
                json!({ "error": "buyers are authenticated: the live page needs --admin-token" }),
            );
        };
        if !given
            .is_some_and(|given| super::auth::constant_time_eq(given.as_bytes(), token.as_bytes()))
        {
            return fail(
                &server.counts,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                json!({ "error": "the live page needs the operator token: open /#token=..." }),
            );
        }
    }
    server.counts.count(200, "ok");
    let stopping = server.stopping.clone();
    let stream = futures_util::stream::unfold((server, 0u64), move |(server, sent)| {
        let stopping = stopping.clone();
        async move {
            if sent == limit {
                return None;
            }
            if sent > 0 {
                tokio::select! {
                    () = tokio::time::sleep(EVERY) => {}
                    () = super::until_stopping(stopping) => return None,
                }
            }
            if *server.stopping.borrow() {
                return None;
            }
            let snapshot = shared_snapshot(&server).await;
            let mut event = Event::default().event("snapshot").data(&*snapshot);
            if sent + 1 == limit {
                // The last one: the browser should not reconnect soon.
                event = event.retry(Duration::from_secs(3600));
            }
            Some((Ok::<_, Infallible>(event), (server, sent + 1)))
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The sale now, as the page shows it.
pub async fn snapshot(server: &Arc<Server>) -> Value {
    let mut answers = Map::new();
    for (status, reason, count) in server.counts.all() {
        if status != 200 || reason == "confirmed" {
            answers.insert(reason.to_owned(), json!(count));
        }
    }
    let latency = {
        let latency = server.latency.lock();
        let us = |quantile: f64| latency.value_at_quantile(quantile) as f64 / 1e3;
        json!({
            "p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "p999": us(0.999),
            "max": latency.max() as f64 / 1e3, "count": latency.len(),
        })
    };
    let Some(running) = server.running.get() else {
        #[cfg(feature = "cluster")]
        if let Some(gateway) = server.gateway.get() {
            return super::cluster::live_snapshot(server, gateway, answers, latency).await;
        }
        return json!({ "state": "recovering", "answers": answers, "latency": latency });
    };
    let control = running.engine.control();
    let now_ns = running.engine.now_ns();
    let asked = tokio::task::spawn_blocking(move || {
        Ok::<_, flashsale::ControlError>((control.sales_page(None, SKUS_SHOWN)?, control.pools()?))
    })
    .await
    .unwrap_or(Err(flashsale::ControlError::ShutDown));
    let (sales, pools) = match asked {
        Ok(asked) => asked,
        Err(error) => {
            return json!({ "state": super::answer::control_error(error).1, "answers": answers, "latency": latency });
        }
    };
    let skus: Vec<Value> = sales
        .iter()
        .map(|sale| super::routes::sale_json(server, now_ns, sale))
        .collect();
    let pools: Vec<Value> = pools.iter().map(|pool| pool_json(now_ns, pool)).collect();
    let live = running.engine.live();
    json!({
        "state": "ready",
        "now": super::catalog_file::wall_time(server.epoch, now_ns),
        "at_ms": now_ns as f64 / 1e6,
        "skus": skus,
        "skus_total": server.catalog.skus().len(),
        "pools": pools,
        "answers": answers,
        "confirmed": live.confirmed_orders,
        "latency": latency,
        "events": running.feed.lengths().iter().sum::<usize>(),
    })
}

/// A pool as the page shows it, at `now_ns` on the engine's (or the sale's) clock.
pub fn pool_json(now_ns: u64, pool: &flashsale::PoolLevels) -> Value {
    json!({
        "sku": pool.first_sku.0,
        "policy": pool.policy.name(),
        "buyers": pool.tickets,
        "served": pool.served,
        "serve_in_ms": pool.serve_at_ns.saturating_sub(now_ns) / 1_000_000,
    })
}
