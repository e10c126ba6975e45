//! An example HTTP shop (axum) in front of the engine, through the async client.
//!
//! Run: `cargo run --release --example shop_server` (listens on 127.0.0.1:8080), then
//!
//! ```text
//! curl -s localhost:8080/sales/1
//! curl -s -X POST localhost:8080/sales/1/buy -d '{"user": 7, "qty": 1, "key": 1}'
//! curl -s localhost:8080/metrics
//! ```
//!
//! Routes and answers: see `shop.rs`. Ctrl-C (or SIGTERM) stops it gracefully: requests in
//! flight finish, then the engine shuts down and its report is printed.

use std::net::SocketAddr;

use clap::Parser;
use flashsale::Engine;

mod shop;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An HTTP shop in front of the flashsale engine.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Units of SKU 1 (the default sale's first trainer size).
    #[arg(long, default_value_t = 1_000)]
    stock: u32,
    /// Most pairs of the trainer (SKUs 1 and 2) one buyer may hold.
    #[arg(long, default_value_t = 2)]
    limit: u32,
    /// Engine shards.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Async-client lanes (each holds up to `ring-capacity` intents in flight per shard).
    #[arg(long, default_value_t = 4)]
    lanes: usize,
    /// Ring capacity per producer lane and shard (a power of two).
    #[arg(long, default_value_t = 1024)]
    ring_capacity: usize,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let catalog = shop::default_catalog(args.stock, args.limit)?;
    let engine = Engine::builder(catalog)
        .shards(args.shards)
        .ring_capacity(args.ring_capacity)
        .start()?;
    let shop = shop::Shop::new(engine, args.lanes)?;

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads);
    }
    let runtime = runtime.build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr).await?;
        eprintln!(
            "shop_server: listening on http://{} (SKU 1: {} units; try GET /sales/1)",
            listener.local_addr()?,
            args.stock
        );
        axum::serve(listener, shop::router(shop.clone()))
            .with_graceful_shutdown(stopped())
            .await
    })?;
    drop(runtime);
    match shop.shutdown() {
        Some(report) => eprintln!("{report}"),
        None => eprintln!("shop_server: requests still hold the engine; not reported"),
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stopped() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    eprintln!("shop_server: stopping");
}
