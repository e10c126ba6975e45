//! Embedding the engine in one's own axum app: one route that buys through the async
//! client. `flashsale serve` is the full service (catalog file, journal, payments, event
//! feed, auth, protection); this is the smallest honest start for a team that wants its
//! own HTTP layer.
//!
//! Run: `cargo run --release --example axum_embed`, then
//! `curl -s -X POST localhost:8081/buy/1 -d '{"user": 7, "qty": 1, "key": 1}'`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use flashsale::{AsyncClient, Catalog, Engine, Intent, Outcome, SkuId, SkuSpec, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Press {
    user: u64,
    qty: u32,
    key: u64,
}

async fn buy(
    State(client): State<Arc<AsyncClient>>,
    Path(sku): Path<u32>,
    Json(press): Json<Press>,
) -> (StatusCode, Json<Value>) {
    let intent = Intent {
        user: UserId(press.user),
        client_key: press.key,
        sku: SkuId(sku),
        quantity: press.qty,
    };
    match client.try_buy(intent).await {
        Ok(Outcome::Confirmed(order)) => (StatusCode::OK, Json(json!({ "order": order.id.0 }))),
        Ok(Outcome::Rejected { reason, .. }) => (
            StatusCode::CONFLICT,
            Json(json!({ "reason": reason.name() })),
        ),
        // Busy (every lane full), shut down or a failed shard: try again later.
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "reason": error.to_string() })),
        ),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 1_000).limit(2))
        .build()?;
    let engine = Engine::builder(catalog).start()?;
    let client = Arc::new(AsyncClient::new(&engine, 4)?);
    let app = Router::new()
        .route("/buy/{sku}", post(buy))
        .with_state(client.clone());
    tokio::runtime::Runtime::new()?.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
        eprintln!("axum_embed: listening on http://127.0.0.1:8081; Ctrl-C stops it");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    })?;
    drop(client);
    eprintln!("{}", engine.shutdown());
    Ok(())
}
