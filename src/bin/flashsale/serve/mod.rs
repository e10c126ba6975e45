//! `flashsale serve`: the sale as an HTTP service. A catalog file (or the demo sale), a
//! data directory that survives restarts (or `--in-memory`), the whole life of an order
//! over HTTP, an order event feed, operator routes behind a token, buyers identified by a
//! proxy header or a signed token, and protection against slow and hostile clients.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | arguments, start-up (recovery while `/readyz` says 503), the accept loop, shutdown |
//! | `routes.rs` | the routes |
//! | `catalog_file.rs` | the TOML catalog |
//! | `feed.rs` | the order event feed |
//! | `dashboard.rs`, `page.html` | the operator's live page and its event stream |
//! | `auth.rs` | operators and buyers |
//! | `answer.rs` | error answers, their reasons, and their counts |
//! | `cluster.rs` | `--nats`: the same routes as a gateway of a sale on NATS JetStream |

mod answer;
mod auth;
pub mod catalog_file;
pub mod check;
#[cfg(feature = "cluster")]
mod cluster;
mod dashboard;
mod feed;
mod fetch;
mod metrics;
mod routes;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use clap::Args;
use flashsale::{AsyncClient, Catalog, Engine, JournalConfig, Placement};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, watch};

use feed::Feed;

/// `flashsale serve`'s options.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The sale's catalog, a TOML file (default: the built-in demo sale).
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Where the journal, snapshots and the sale's epoch live.
    #[arg(long, default_value = "./flashsale-data")]
    data: PathBuf,
    /// Keep nothing on disk: a restart starts the sale afresh.
    #[arg(long, conflicts_with = "data")]
    in_memory: bool,
    /// Journal group commits are written to the OS without waiting for the disk
    /// (survives a crash of the process, not of the machine).
    #[arg(long)]
    no_sync: bool,
    /// Snapshot each shard after this many commands (recovery replays only what follows).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every: u64,
    /// Engine shards (threads deciding).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    shards: u32,
    /// Async-client lanes (each holds up to `ring-capacity` intents in flight per shard).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    lanes: u32,
    /// Ring slots per lane and shard (a power of two).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    ring_capacity: u32,
    /// Orders each shard makes room for at start-up (default: its stock, up to
    /// 4,194,304). A shard that confirms more grows its order book mid-sale, which pauses
    /// its decisions: about a second per 4M orders on a small VM. Room costs about 96
    /// bytes an order, allocated at start; room past the machine's memory is refused.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=flashsale::EngineBuilder::ORDER_CAPACITY_MAX as u64))]
    order_capacity: Option<u64>,
    /// HTTP worker threads (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// Operator token for the `/admin` routes (or FLASHSALE_ADMIN_TOKEN), at least 16
    /// bytes; without one they are off.
    #[arg(long, env = "FLASHSALE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// How buyers are identified: `demo` (the body's `user`, unchecked: for trying it
    /// out), `header` (a trusted proxy's header, see --buyer-header), `jwt` (a signed
    /// bearer token whose `sub` is the buyer id, see --jwt-secret and --jwt-key).
    /// Without it, `demo`, on a loopback --addr only: another address needs it named.
    #[arg(long, value_enum)]
    auth: Option<AuthMode>,
    /// The header a trusted front proxy puts the authenticated buyer id in.
    #[arg(long, default_value = "x-buyer-id")]
    buyer_header: String,
    /// The HS256 secret buyer tokens are signed with (or FLASHSALE_JWT_SECRET), at least
    /// 32 bytes.
    #[arg(long, env = "FLASHSALE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Public keys buyer tokens are signed with: a file or an https URL holding a PEM
    /// public key (RSA, EC P-256/P-384, Ed25519) or a JWKS (JSON, as an identity
    /// provider publishes it at its `jwks_uri`). Repeat it for more; instead of
    /// --jwt-secret. All are read again on SIGHUP, and, where one is a URL, every
    /// --jwt-key-refresh.
    #[arg(long, value_name = "FILE|URL")]
    jwt_key: Vec<String>,
    /// How often --jwt-key URLs are fetched again (the keys change only if what they
    /// hold did; a failed fetch keeps the old keys and is tried again within 30 s). A
    /// token naming a key id none of the keys has also starts a fetch, at most every 30 s.
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    jwt_key_refresh: Duration,
    /// A PEM file of CA certificates to trust for --jwt-key https URLs, besides the
    /// system's (an identity provider inside the company); repeat it for more.
    #[arg(long, value_name = "FILE")]
    jwt_ca: Vec<PathBuf>,
    /// An audience buyer tokens may be for (their `aud`); repeat it for more. Given, a
    /// token must name one; not given, a token that names any is refused.
    #[arg(long, value_name = "AUD")]
    jwt_audience: Vec<String>,
    /// An issuer buyer tokens may come from (their `iss`); repeat it for more. Given, a
    /// token must name one.
    #[arg(long, value_name = "ISS")]
    jwt_issuer: Vec<String>,
    /// Requests per second each buyer may make (a token bucket; 429 beyond).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    rate_per_buyer: u32,
    /// Requests a buyer may make at once before the rate applies.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    burst_per_buyer: u32,
    /// Longest time a client may take to send a request's headers; also how long an
    /// idle keep-alive connection stays open (above 0).
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    header_timeout: Duration,
    /// Longest time a client may take to send a request's body (above 0).
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    body_timeout: Duration,
    /// Largest request body, bytes (413 beyond); at least 256 (a buy's body, every field at
    /// its largest, is under 100).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(256..))]
    body_limit: u32,
    /// Most connections open at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// On SIGTERM: how long requests in flight may take to finish before every connection
    /// is closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Serve as a stateless gateway of a sale on these NATS servers (comma-separated)
    /// rather than with an engine in this process: decisions come from `flashsale node`s
    /// through the sale's JetStream logs.
    #[cfg(feature = "cluster")]
    #[arg(
        long,
        env = "FLASHSALE_NATS",
        conflicts_with_all = ["in_memory", "no_sync", "shards", "data", "snapshot_every"]
    )]
    nats: Option<String>,
    /// With --nats: the sale's name (as its nodes').
    #[cfg(feature = "cluster")]
    #[arg(long, default_value = "sale", requires = "nats")]
    sale: String,
    /// With --nats: the sale's partitions (as its nodes').
    #[cfg(feature = "cluster")]
    #[arg(long, default_value_t = 1, requires = "nats")]
    partitions: u16,
    /// With --nats: copies JetStream keeps of each log (as its nodes').
    #[cfg(feature = "cluster")]
    #[arg(long, default_value_t = 3, requires = "nats")]
    replicas: usize,
    /// With --nats: how long a batch of buys waits for more after its first.
    #[cfg(feature = "cluster")]
    #[arg(long, default_value = "500us", value_parser = humantime::parse_duration, requires = "nats")]
    linger: Duration,
    /// With --nats: the largest quantity one intent may ask for (as the nodes').
    #[cfg(feature = "cluster")]
    #[arg(long, default_value_t = 16, requires = "nats")]
    max_quantity: u32,
    /// With --nats: also serve the order event feed (`GET /orders/events`), from a
    /// follower of every partition's log on a thread and a NATS connection of its own.
    /// It holds every partition's state, as an engine node does.
    #[cfg(feature = "cluster")]
    #[arg(long, requires = "nats")]
    feed: bool,
    /// With --feed: orders the follower makes room for in each partition at start-up, as
    /// a node's --order-capacity (default: its stock, up to 4,194,304). Past it the
    /// follower's order book grows, which pauses the feed, not the sale.
    #[cfg(feature = "cluster")]
    #[arg(long, requires = "feed", value_parser = clap::value_parser!(u64).range(0..=flashsale::EngineBuilder::ORDER_CAPACITY_MAX as u64))]
    feed_order_capacity: Option<u64>,
}

/// A duration as `humantime` reads it (`5s`, `250ms`), refused when zero: a timeout of
/// nothing would cut off every client.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be above 0".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

/// Buyer identification modes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// The body's `user` field (demo only).
    Demo,
    /// A trusted proxy's header.
    Header,
    /// A signed token (HS256, or with a public key).
    Jwt,
}

/// The engine side, once recovered.
pub struct Running {
    pub engine: Engine,
    pub client: AsyncClient,
    pub feed: Arc<Feed>,
    /// Where the feed's events up to the start came from: "its checkpoint" or "the
    /// journals" (replayed).
    pub feed_from: &'static str,
}

/// What every request handler shares.
pub struct Server {
    pub running: OnceLock<Running>,
    /// With `--nats`: the gateway, once connected.
    #[cfg(feature = "cluster")]
    pub gateway: OnceLock<flashsale::cluster::Gateway>,
    /// With `--nats --feed`: the order event feed, from a follower of the logs.
    #[cfg(feature = "cluster")]
    pub followed: Option<cluster::FollowedFeed>,
    pub catalog: Catalog,
    /// The wall-clock time of the engine clock's 0.
    pub epoch: SystemTime,
    pub counts: answer::Counts,
    pub latency: parking_lot::Mutex<hdrhistogram::Histogram<u64>>,
    pub buyers: auth::Buyers,
    pub admin_token: Option<String>,
    pub limiter: governor::DefaultKeyedRateLimiter<u64>,
    pub body_limit: usize,
    pub body_timeout: Duration,
    /// Flips to true when shutdown starts (long polls return).
    pub stopping: watch::Receiver<bool>,
    /// The live page's last snapshot, shared by every open page.
    pub live_page: dashboard::LastSnapshot,
}

/// Exit status: 0 after a clean shutdown, 1 when the server could not run or a shard failed
/// while it ran (a supervisor sees the failure even if nobody read the log), 2 for bad
/// input (the catalog file, the arguments, a data directory of another sale).
pub fn run(args: ServeArgs) -> u8 {
    match start(args) {
        Ok(()) => 0,
        Err((code, message)) => {
            note!("flashsale serve: {message}");
            code
        }
    }
}

type Failure = (u8, String);

/// The fewest bytes of an HS256 secret: the hash's size (RFC 7518, section 3.2, says a
/// shorter key must not be used), so that it cannot be found by trying.
const JWT_SECRET_MIN: usize = 32;

/// The fewest bytes of an operator token, so that it cannot be found by trying.
const ADMIN_TOKEN_MIN: usize = 16;

/// Refuses an operator token or HS256 secret short enough to be guessed, naming its flag
/// and length, never the secret itself.
fn check_secrets(args: &ServeArgs) -> Result<(), Failure> {
    let jwt_secret = args
        .jwt_secret
        .as_ref()
        .filter(|_| args.auth == Some(AuthMode::Jwt));
    for (flag, secret, min) in [
        (
            "--admin-token (or FLASHSALE_ADMIN_TOKEN)",
            args.admin_token.as_ref(),
            ADMIN_TOKEN_MIN,
        ),
        (
            "--jwt-secret (or FLASHSALE_JWT_SECRET)",
            jwt_secret,
            JWT_SECRET_MIN,
        ),
    ] {
        if let Some(secret) = secret
            && !secret.is_empty()
            && secret.len() < min
        {
            return Err((
                2,
                format!(
                    "{flag}: {} bytes; a secret of at least {min} cannot be found by trying \
                     (make one with `openssl rand -hex 32`)",
                    secret.len()
                ),
            ));
        }
    }
    Ok(())
}

fn start(args: ServeArgs) -> Result<(), Failure> {
    check_secrets(&args)?;
    // Demo mode lets anyone buy as anyone and read every order: by default, only from this
    // machine (as Redis's protected mode keeps a server without a password to loopback).
    if args.auth.is_none() && !args.addr.ip().is_loopback() {
        return Err((
            2,
            format!(
                "--addr {}: other machines could buy as any buyer in demo mode (the default, \
                 which takes the body's \"user\"): give --auth header or --auth jwt, or \
                 --auth demo to serve the demo there anyway",
                args.addr
            ),
        ));
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads as usize);
    }
    let runtime = runtime
        .build()
        .map_err(|error| (1, format!("cannot start the HTTP runtime: {error}")))?;
    let nats = open_nats(&args, &runtime)?;
    let gateway = nats.is_some();
    let data = (!args.in_memory && !gateway).then(|| args.data.clone());
    let epoch = match (&nats, &data) {
        (Some(nats), _) => nats_epoch(nats),
        (None, Some(dir)) => epoch_of(dir)?,
        (None, None) => SystemTime::now(),
    };
    let catalog = match &args.catalog {
        Some(path) => catalog_file::load(path, epoch).map_err(|error| (2, error.0))?,
        None => {
            catalog_file::parse("the demo sale", DEMO_SALE, epoch).map_err(|error| (1, error.0))?
        }
    };
    let token_flags = [
        ("--jwt-key", args.jwt_key.is_empty()),
        ("--jwt-audience", args.jwt_audience.is_empty()),
        ("--jwt-issuer", args.jwt_issuer.is_empty()),
        ("--jwt-ca", args.jwt_ca.is_empty()),
    ];
    if let Some((flag, _)) = token_flags.iter().find(|(_, absent)| !absent)
        && args.auth != Some(AuthMode::Jwt)
    {
        return Err((2, format!("{flag} is for --auth jwt")));
    }
    let key_source = KeySource::of(&args)?.map(Arc::new);
    let buyers = match args.auth.unwrap_or(AuthMode::Demo) {
        AuthMode::Demo => auth::Buyers::Demo,
        AuthMode::Header => auth::Buyers::Header(
            axum::http::HeaderName::try_from(args.buyer_header.as_str()).map_err(|_| {
                (
                    2,
                    format!(
                        "--buyer-header {:?} is not a header name",
                        args.buyer_header
                    ),
                )
            })?,
        ),
        AuthMode::Jwt => auth::Buyers::jwt(token_keys(&args, key_source.as_deref(), &runtime)?),
    };
    let quota = governor::Quota::per_second(
        NonZeroU32::new(args.rate_per_buyer).unwrap_or(NonZeroU32::MIN),
    )
    .allow_burst(NonZeroU32::new(args.burst_per_buyer).unwrap_or(NonZeroU32::MIN));
    let (stop, stopping) = watch::channel(false);
    #[cfg(feature = "cluster")]
    let followed = args
        .feed
        .then(|| cluster::FollowedFeed::start(&args, &catalog, stopping.clone()))
        .transpose()?;
    let server = Arc::new(Server {
        running: OnceLock::new(),
        #[cfg(feature = "cluster")]
        gateway: OnceLock::new(),
        #[cfg(feature = "cluster")]
        followed,
        catalog: catalog.clone(),
        epoch,
        counts: answer::Counts::default(),
        latency: parking_lot::Mutex::new(flashsale::report::latency_histogram()),
        buyers,
        admin_token: args.admin_token.clone().filter(|token| !token.is_empty()),
        limiter: governor::RateLimiter::keyed(quota),
        body_limit: args.body_limit as usize,
        body_timeout: args.body_timeout,
        stopping,
        live_page: dashboard::LastSnapshot::default(),
    });

    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.addr))
        .map_err(|error| (1, format!("cannot listen on {}: {error}", args.addr)))?;
    let local = listener
        .local_addr()
        .map_err(|error| (1, format!("cannot read the listening address: {error}")))?;
    let router = if nats.is_some() {
        gateway_router(server.clone())
    } else {
        routes::router(server.clone())
    };
    let accept = runtime.spawn(accept_loop(
        listener,
        router,
        server.clone(),
        stop.subscribe(),
        Limits::of(&args),
    ));
    // The signal handlers are in place before anything is printed, so a SIGTERM that
    // follows "ready" (or comes during recovery) always starts a clean shutdown.
    let signals = {
        let _runtime = runtime.enter();
        Signals::listen().map_err(|error| {
            (
                1,
                format!("cannot listen for SIGTERM, SIGINT and SIGHUP: {error}"),
            )
        })?
    };
    let Signals {
        terminate,
        interrupt,
        hangup,
    } = signals;
    let signal = runtime.spawn(async move {
        Signals::stopped(terminate, interrupt).await;
        let _ = stop.send(true);
    });
    let reload = runtime.spawn(Signals::reload_on_hangup(
        hangup,
        server.clone(),
        key_source.clone(),
    ));
    let refresh = key_source
        .filter(|keys| keys.has_urls())
        .map(|keys| runtime.spawn(refresh_keys(server.clone(), keys, args.jwt_key_refresh)));

    match &server.buyers {
        auth::Buyers::Demo => note!(
            "flashsale serve: DEMO MODE: buyers are whoever the body's \"user\" says; use --auth header or --auth jwt in front of real buyers"
        ),
        other => note!("flashsale serve: buyers identified by {other:?}"),
    }
    if server.admin_token.is_none() {
        note!("flashsale serve: operator routes (/admin) are off: no --admin-token");
    }
    note!("flashsale serve: listening on http://{local} (recovering...)");

    let recovered = match nats {
        Some(nats) => connect_gateway(&args, &runtime, nats, &catalog, &server),
        None => {
            let started = std::time::Instant::now();
            recover(&args, data.as_deref(), &catalog, epoch).map(|running| {
                let events: usize = running.feed.lengths().iter().sum();
                let feed_from = running.feed_from;
                let _ = server.running.set(running);
                format!(
                    "{} SKUs on {} shard(s), {}",
                    catalog.skus().len(),
                    args.shards,
                    data.as_ref().map_or(
                        "in memory (nothing survives a restart)".to_owned(),
                        |dir| format!(
                            "data in {} (recovered in {:.2} s; the order feed holds {}, from {})",
                            dir.display(),
                            started.elapsed().as_secs_f64(),
                            crate::output::counted(events as u64, "event"),
                            feed_from
                        )
                    ),
                )
            })
        }
    };
    let what = match recovered {
        Ok(what) => what,
        Err(failure) => {
            signal.abort();
            reload.abort();
            refresh.iter().for_each(|task| task.abort());
            accept.abort();
            return Err(failure);
        }
    };
    if let Some(kind) = data.as_deref().and_then(crate::fsync::in_memory_filesystem) {
        note!(
            "flashsale serve: note: the data directory is on {kind}, in memory: its journal \
             survives a restart of the process, not of the machine"
        );
    }
    note!("flashsale serve: ready: {what}; try GET http://{local}/sales");
    let failures = server
        .running
        .get()
        .map(|running| runtime.spawn(say_failures(running.engine.control())));

    runtime.block_on(async {
        let _ = signal.await;
    });
    failures.iter().for_each(|task| task.abort());
    reload.abort();
    refresh.iter().for_each(|task| task.abort());
    note!(
        "flashsale serve: stopping (up to {:?} for requests in flight)",
        args.shutdown_grace
    );
    runtime.block_on(async {
        let _ = tokio::time::timeout(args.shutdown_grace + Duration::from_secs(1), accept).await;
    });
    runtime.shutdown_timeout(Duration::from_millis(100));
    let mut failed = Vec::new();
    let server = Arc::into_inner(server);
    match server.and_then(|server| server.running.into_inner()) {
        Some(running) => {
            drop(running.client);
            let report = running.engine.shutdown();
            note!("{report}");
            failed = report.failed_shards.clone();
            // Every journaled command's events are in the feed now, unless a shard failed
            // (its journal may hold a group whose events were never released).
            if let Some(dir) = &data
                && report.failed_shards.is_empty()
            {
                let started = std::time::Instant::now();
                match running.feed.save_checkpoint(&JournalConfig::durable(dir)) {
                    Ok(bytes) => note!(
                        "flashsale serve: the order feed's checkpoint: {} events, {bytes} bytes, in {:.2} s",
                        running.feed.lengths().iter().sum::<usize>(),
                        started.elapsed().as_secs_f64()
                    ),
                    Err(error) => note!(
                        "flashsale serve: the order feed's checkpoint was not written ({error}); the next start replays the journals"
                    ),
                }
            }
        }
        // A gateway has no engine of its own: its sale is decided on the nodes.
        None if gateway => {
            note!("flashsale serve: the gateway stopped; the sale goes on on its nodes")
        }
        None => {
            note!("flashsale serve: requests still hold the engine; it stops with the process")
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        let shards: Vec<String> = failed.iter().map(|shard| shard.0.to_string()).collect();
        Err((
            1,
            format!(
                "stopped with {} failed shard(s) ({}); every order it confirmed is in its journal, \
                 which the next start recovers once the cause above is fixed",
                failed.len(),
                shards.join(", ")
            ),
        ))
    }
}

/// Says once, as soon as it is seen (within a quarter of a second), each shard that
/// failed and why: a full disk names the journal file and the system's error. Buyers get
/// only 503 `shard_failed`, which says nothing of the disk. Snapshots that could not be
/// written are said too, when first seen and then as their count doubles (one may fall
/// due every `--snapshot-every` commands, many a second in a busy sale).
async fn say_failures(control: flashsale::Control) {
    let mut said = std::collections::HashSet::new();
    let mut snapshots_said = std::collections::HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for (shard, why) in control.failures() {
            if said.insert(shard) {
                note!(
                    "flashsale serve: shard {} FAILED: {why}; it answers shard_failed (503) \
                     until serve is restarted, which recovers what its journal holds",
                    shard.0
                );
            }
        }
        for (shard, count, why) in control.snapshot_failures() {
            let before = snapshots_said.insert(shard, count).unwrap_or(0);
            // The first, then the 2nd, 4th, 8th...
            if before == 0 || count.ilog2() > before.ilog2() {
                note!(
                    "flashsale serve: shard {}: {count} snapshot(s) could not be written, the \
                     last: {why}; the shard goes on, and a restart replays more of its journal",
                    shard.0
                );
            }
        }
    }
}

/// With `--nats`: the sale's NATS connection and streams, opened.
#[cfg(feature = "cluster")]
type Nats = cluster::Opening;
/// Without the `cluster` feature there is no `--nats`.
#[cfg(not(feature = "cluster"))]
type Nats = std::convert::Infallible;

#[cfg(feature = "cluster")]
fn open_nats(args: &ServeArgs, runtime: &tokio::runtime::Runtime) -> Result<Option<Nats>, Failure> {
    cluster::open(args, runtime)
}

#[cfg(not(feature = "cluster"))]
fn open_nats(_: &ServeArgs, _: &tokio::runtime::Runtime) -> Result<Option<Nats>, Failure> {
    Ok(None)
}

#[cfg(feature = "cluster")]
fn nats_epoch(nats: &Nats) -> SystemTime {
    nats.epoch()
}

#[cfg(not(feature = "cluster"))]
fn nats_epoch(nats: &Nats) -> SystemTime {
    match *nats {}
}

#[cfg(feature = "cluster")]
fn gateway_router(server: Arc<Server>) -> axum::Router {
    cluster::router(server)
}

#[cfg(not(feature = "cluster"))]
fn gateway_router(server: Arc<Server>) -> axum::Router {
    routes::router(server)
}

#[cfg(feature = "cluster")]
fn connect_gateway(
    args: &ServeArgs,
    runtime: &tokio::runtime::Runtime,
    nats: Nats,
    catalog: &Catalog,
    server: &Server,
) -> Result<String, Failure> {
    let gateway = cluster::connect(args, runtime, nats, catalog)?;
    let what = format!(
        "a gateway ({:016x}) of sale {:?} on NATS, {} SKUs in {} partition(s)",
        gateway.id(),
        args.sale,
        catalog.skus().len(),
        args.partitions
    );
    let _ = server.gateway.set(gateway);
    let feed = if server.followed.is_some() {
        "; the order feed follows every partition's log from its first entry"
    } else {
        ""
    };
    Ok(format!("{what}{feed}"))
}

#[cfg(not(feature = "cluster"))]
fn connect_gateway(
    _: &ServeArgs,
    _: &tokio::runtime::Runtime,
    nats: Nats,
    _: &Catalog,
    _: &Server,
) -> Result<String, Failure> {
    match nats {}
}

/// What `--auth jwt` verifies tokens with: the secret or the key files and URLs, one of
/// them.
fn token_keys(
    args: &ServeArgs,
    keys: Option<&KeySource>,
    runtime: &tokio::runtime::Runtime,
) -> Result<auth::TokenKeys, Failure> {
    let secret = args
        .jwt_secret
        .as_deref()
        .filter(|secret| !secret.is_empty());
    match (secret, keys) {
        (Some(_), Some(_)) => Err((
            2,
            "--auth jwt takes --jwt-secret or --jwt-key, not both".to_owned(),
        )),
        (Some(secret), None) => Ok(auth::TokenKeys::secret(
            secret.as_bytes(),
            &KeySource::rules(args),
        )),
        (None, None) => Err((
            2,
            "--auth jwt needs --jwt-secret (or FLASHSALE_JWT_SECRET) or --jwt-key FILE|URL"
                .to_owned(),
        )),
        (None, Some(keys)) => runtime.block_on(keys.load()),
    }
}

/// Where a `--jwt-key` is read from (a URL with the fetcher all URLs share).
enum KeyPlace {
    File(PathBuf),
    Url(fetch::KeyUrl, Arc<fetch::Fetcher>),
}

/// The `--jwt-key` files and URLs and what tokens must say: read at start and again on
/// SIGHUP, the URLs also every `--jwt-key-refresh`.
struct KeySource {
    places: Vec<KeyPlace>,
    rules: auth::TokenRules,
    /// What the places held when last read, so that a refresh that finds the same
    /// changes nothing (a change of keys empties the verified-token memory).
    last: parking_lot::Mutex<Vec<(String, Vec<u8>)>>,
}

/// After a failed refresh, the next try comes this soon (or at the refresh period, if
/// sooner).
const KEY_RETRY: Duration = Duration::from_secs(30);
/// Fetches asked for by tokens naming an unknown key come at most this often, however
/// many such tokens arrive (made-up ones cannot make the server hammer the provider).
const KEY_ON_DEMAND_EVERY: Duration = Duration::from_secs(30);

impl KeySource {
    /// The key files and URLs of `args`, if any.
    fn of(args: &ServeArgs) -> Result<Option<Self>, Failure> {
        if args.jwt_key.is_empty() {
            return Ok(None);
        }
        let urls = args
            .jwt_key
            .iter()
            .any(|given| fetch::KeyUrl::is_url(given));
        if !urls && !args.jwt_ca.is_empty() {
            return Err((2, "--jwt-ca is for --jwt-key https URLs".to_owned()));
        }
        if args.jwt_key_refresh.is_zero() {
            return Err((2, "--jwt-key-refresh must be above 0".to_owned()));
        }
        let fetcher = urls
            .then(|| fetch::Fetcher::new(&args.jwt_ca).map(Arc::new))
            .transpose()
            .map_err(|why| (2, why))?;
        let places = args
            .jwt_key
            .iter()
            .map(|given| match &fetcher {
                Some(fetcher) if fetch::KeyUrl::is_url(given) => fetch::KeyUrl::parse(given)
                    .map(|url| KeyPlace::Url(url, fetcher.clone()))
                    .map_err(|why| (2, format!("--jwt-key {given}: {why}"))),
                _ => Ok(KeyPlace::File(PathBuf::from(given))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self {
            places,
            rules: Self::rules(args),
            last: parking_lot::Mutex::new(Vec::new()),
        }))
    }

    fn rules(args: &ServeArgs) -> auth::TokenRules {
        auth::TokenRules {
            audience: args.jwt_audience.clone(),
            issuer: args.jwt_issuer.clone(),
        }
    }

    fn has_urls(&self) -> bool {
        self.places
            .iter()
            .any(|place| matches!(place, KeyPlace::Url(..)))
    }

    /// Reads every file and fetches every URL, named as given.
    async fn read(&self) -> Result<Vec<(String, Vec<u8>)>, Failure> {
        let mut contents = Vec::with_capacity(self.places.len());
        for place in &self.places {
            contents.push(match place {
                KeyPlace::File(path) => {
                    let name = path.display().to_string();
                    // A key file is a few kilobytes, a JWKS a few more.
                    let read = crate::input::read_bounded(path, fetch::KEYS_MAX as u64)
                        .map_err(|why| (2, format!("--jwt-key {name}: {why}")))?;
                    (name, read)
                }
                KeyPlace::Url(url, fetcher) => {
                    let fetched = fetcher
                        .fetch(url)
                        .await
                        .map_err(|why| (2, format!("--jwt-key {url}: {why}")))?;
                    (url.to_string(), fetched)
                }
            });
        }
        Ok(contents)
    }

    /// The keys in `contents`, which are then the last read.
    fn keys(&self, contents: Vec<(String, Vec<u8>)>) -> Result<auth::TokenKeys, Failure> {
        let keys = auth::TokenKeys::public(&contents, &self.rules).map_err(|why| (2, why))?;
        *self.last.lock() = contents;
        Ok(keys)
    }

    /// Reads the files and fetches the URLs.
    async fn load(&self) -> Result<auth::TokenKeys, Failure> {
        let contents = self.read().await?;
        self.keys(contents)
    }

    /// As [`load`](Self::load), but `None` when every place holds what it held last.
    async fn load_if_changed(&self) -> Result<Option<auth::TokenKeys>, Failure> {
        let contents = self.read().await?;
        if *self.last.lock() == contents {
            return Ok(None);
        }
        self.keys(contents).map(Some)
    }
}

/// Fetches the `--jwt-key` URLs (and reads the files) again every `every`, and when a
/// token names a key none of ours has (at most every [`KEY_ON_DEMAND_EVERY`]), taking
/// the keys when they changed, until its task is aborted.
async fn refresh_keys(server: Arc<Server>, keys: Arc<KeySource>, every: Duration) {
    let auth::Buyers::Jwt(tokens) = &server.buyers else {
        return;
    };
    let mut wait = every;
    let mut asked: Option<tokio::time::Instant> = None;
    loop {
        let asked_for = async {
            loop {
                tokens.named_an_unknown_key().await;
                if asked.is_none_or(|at| at.elapsed() >= KEY_ON_DEMAND_EVERY) {
                    return;
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = asked_for => {
                asked = Some(tokio::time::Instant::now());
                note!("flashsale serve: a token names a key not among ours: fetching the keys again");
            }
        }
        wait = every;
        match keys.load_if_changed().await {
            Ok(None) => {}
            Ok(Some(loaded)) => {
                tokens.replace(loaded);
                note!(
                    "flashsale serve: buyer token keys changed where they are read from: {} keys",
                    tokens.key_count()
                );
            }
            Err((_, why)) => {
                wait = every.min(KEY_RETRY);
                note!(
                    "flashsale serve: buyer token keys not read again (the old ones stay; next try in {wait:?}): {why}"
                );
            }
        }
    }
}

/// The sale's epoch: read from the data directory, or written there (synced, before any
/// journal) on its first start. A directory that holds journals but no epoch is refused:
/// their instants count from the epoch they were written under, and a new one would move
/// every instant the catalog gives as a date.
fn epoch_of(dir: &std::path::Path) -> Result<SystemTime, Failure> {
    if dir.exists() && !dir.is_dir() {
        return Err((2, format!("--data {}: not a directory", dir.display())));
    }
    std::fs::create_dir_all(dir).map_err(|error| {
        (
            1,
            format!(
                "cannot create the data directory {}: {error}",
                dir.display()
            ),
        )
    })?;
    if let Some(epoch) = read_epoch(dir)? {
        return Ok(epoch);
    }
    let path = dir.join("sale.epoch");
    let journals = JournalConfig::durable(dir);
    if let Some(found) = journals
        .first_shard_file()
        .map_err(|error| (1, error.to_string()))?
    {
        return Err((
            2,
            format!(
                "{} holds {} but no sale.epoch: the journal's instants count from the epoch \
                 it was written under; write it back (nanoseconds since 1970) or move the \
                 journals and snapshots away",
                dir.display(),
                found.display()
            ),
        ));
    }
    let now = SystemTime::now();
    let temporary = path.with_extension("tmp");
    let storage = flashsale::storage::FileStorage;
    flashsale::storage::Storage::write_file(
        &storage,
        &temporary,
        epoch_text(catalog_file::unix_nanos(now)).as_bytes(),
    )
    .and_then(|()| flashsale::storage::Storage::rename(&storage, &temporary, &path))
    .map_err(|error| (1, format!("cannot write {}: {error}", path.display())))?;
    Ok(now)
}

/// `sale.epoch` as a start writes it: the epoch's nanoseconds since 1970, then a line
/// `check <CRC-32 of those digits>`, so that a flipped bit anywhere in the file is found.
/// A digit changed unnoticed would move the sale's clock: every instant in the journals,
/// every window given as a date and every payment deadline counts from the epoch.
fn epoch_text(nanos: u128) -> String {
    let digits = nanos.to_string();
    format!(
        "{digits}\ncheck {:08x}\n",
        crc32fast::hash(digits.as_bytes())
    )
}

/// The sale's epoch as the data directory records it (`sale.epoch`), if it does: as a
/// start writes it, or as an operator writes it back by hand (the number alone on one
/// line). Anything else is damage, refused (exit 1).
fn read_epoch(dir: &std::path::Path) -> Result<Option<SystemTime>, Failure> {
    let path = dir.join("sale.epoch");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let first = text.split('\n').next().unwrap_or_default();
            let nanos = first.parse::<u64>().ok().filter(|&nanos| {
                let by_hand = text.trim() == first && first.bytes().all(|b| b.is_ascii_digit());
                text == epoch_text(u128::from(nanos)) || by_hand
            });
            let Some(nanos) = nanos else {
                return Err((
                    1,
                    format!(
                        "{} is damaged or not a sale epoch: a start writes the nanoseconds since \
                         1970 and a line \"check <their CRC-32>\"; written back by hand, the \
                         number alone",
                        path.display()
                    ),
                ));
            };
            Ok(Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // Not UTF-8 is damage too.
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => Err((
            1,
            format!("{} is damaged or not a sale epoch", path.display()),
        )),
        Err(error) => Err((1, format!("cannot read {}: {error}", path.display()))),
    }
}

/// An engine's refusal as an exit: 2 for bad input (a directory of another sale: another
/// catalog or shard count, or journals no manifest vouches for; room for orders past the
/// machine's memory), 1 for a directory that cannot be read (a damaged manifest among
/// it) or an engine that cannot run.
pub(super) fn engine_failure(error: flashsale::EngineError) -> Failure {
    match error {
        flashsale::EngineError::JournalMismatch { .. }
        | flashsale::EngineError::ManifestMissing { .. }
        | flashsale::EngineError::NotEnoughMemory { .. } => (2, error.to_string()),
        other => (1, other.to_string()),
    }
}

/// Rebuilds the event feed from the journals and starts the engine on them.
fn recover(
    args: &ServeArgs,
    data: Option<&std::path::Path>,
    catalog: &Catalog,
    epoch: SystemTime,
) -> Result<Running, Failure> {
    let shards = args.shards as usize;
    let placement = Placement::new(catalog, shards)
        .map_err(|error| (2, format!("--shards {shards}: {error}")))?;
    let feed = Feed::new(placement.shards());
    let mut feed_from = "the journals";
    let since_epoch = SystemTime::now()
        .duration_since(epoch)
        .unwrap_or_default()
        .as_nanos();
    let mut builder = Engine::builder(catalog.clone())
        .shards(shards)
        .ring_capacity(args.ring_capacity as usize)
        .clock_starts_at(u64::try_from(since_epoch).unwrap_or(u64::MAX));
    if let Some(orders) = args.order_capacity {
        builder = builder.order_capacity(usize::try_from(orders).unwrap_or(usize::MAX));
    }
    if let Some(dir) = data {
        let config = JournalConfig {
            sync: !args.no_sync,
            snapshot_every: Some(args.snapshot_every),
            ..JournalConfig::durable(dir)
        };
        // A directory another process is serving from is refused before its journals
        // are read (they may be mid-append). The engine takes the lock for good when it
        // starts; this early look only makes the refusal come first.
        config.lock().map_err(|error| (1, error.to_string()))?;
        // The manifest first: a directory of another sale is refused before anything is
        // replayed under this catalog.
        config
            .check_manifest(catalog, placement.shards())
            .map_err(engine_failure)?;
        // The checkpoint a clean shutdown left, if the journals are still the ones it
        // was written from; else the journals replayed.
        let checkpoint = feed.load_checkpoint(&config);
        if let Err(why) = &checkpoint {
            note!(
                "flashsale serve: the order feed's checkpoint is not used ({why}): replaying the journals"
            );
        }
        if checkpoint == Ok(true) {
            feed_from = "its checkpoint";
        } else {
            feed.rebuild(&config, catalog, &placement)
                .map_err(|error| (1, format!("cannot read the journal: {error}")))?;
        }
        builder = builder.journal(config);
    }
    let sinks = feed.clone();
    let engine = builder
        .order_sink(move |shard| sinks.sink(shard))
        .start()
        .map_err(engine_failure)?;
    for passed in engine.snapshots_passed_over() {
        note!("flashsale serve: {passed}; replayed the journal from an older point instead");
    }
    for short in engine.order_room_short() {
        note!(
            "flashsale serve: {}",
            crate::order_room_note("shard", short)
        );
    }
    let client = AsyncClient::new(&engine, args.lanes as usize)
        .map_err(|error| (1, format!("cannot start the async client: {error}")))?;
    Ok(Running {
        engine,
        client,
        feed,
        feed_from,
    })
}

/// Connection settings.
#[derive(Clone, Copy)]
struct Limits {
    header_timeout: Duration,
    max_connections: u32,
    grace: Duration,
}

impl Limits {
    fn of(args: &ServeArgs) -> Self {
        Self {
            header_timeout: args.header_timeout,
            max_connections: args.max_connections,
            grace: args.shutdown_grace,
        }
    }
}

/// Accepts connections (at most `max_connections` open) until `stop`, then lets requests
/// in flight finish for up to the grace period and closes every connection.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    server: Arc<Server>,
    stop: watch::Receiver<bool>,
    limits: Limits,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections as usize));
    let mut connections = tokio::task::JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let prune = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            loop {
                every.tick().await;
                server.limiter.retain_recent();
            }
        })
    };
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = until_stopping(stop.clone()) => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors and the like: back off a little, go on.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = until_stopping(stop.clone()) => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = until_stopping(stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    prune.abort();
    let drained = tokio::time::timeout(limits.grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        note!(
            "flashsale serve: {} connection(s) still open after the grace period; closing them",
            connections.len()
        );
        connections.shutdown().await;
    }
}

/// Resolves once shutdown has started.
pub async fn until_stopping(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from the moment this is made, and SIGHUP.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside the runtime's context).
    fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Reads the buyer token key files (and fetches the URLs) again on each SIGHUP (a
    /// server without any says there is nothing to read), until its task is aborted.
    async fn reload_on_hangup(
        mut hangup: tokio::signal::unix::Signal,
        server: Arc<Server>,
        keys: Option<Arc<KeySource>>,
    ) {
        while hangup.recv().await.is_some() {
            let (auth::Buyers::Jwt(tokens), Some(keys)) = (&server.buyers, &keys) else {
                note!("flashsale serve: SIGHUP: nothing to read again (no --jwt-key)");
                continue;
            };
            match keys.load().await {
                Ok(loaded) => {
                    tokens.replace(loaded);
                    note!(
                        "flashsale serve: SIGHUP: buyer token keys read again: {} keys",
                        tokens.key_count()
                    );
                }
                Err((_, why)) => {
                    note!("flashsale serve: SIGHUP: the old buyer token keys stay: {why}")
                }
            }
        }
    }

    /// Resolves on the first SIGTERM or SIGINT.
    async fn stopped(
        mut terminate: tokio::signal::unix::Signal,
        mut interrupt: tokio::signal::unix::Signal,
    ) {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    }
}

/// The demo sale: two sizes of a trainer (at most 2 pairs a buyer across both, 10-minute
/// payment holds, a waitlist), a hoodie whose sale opens in an hour, and a lipstick sold
/// by opening draw over its first 30 seconds.
pub const DEMO_SALE: &str = include_str!("../../../../examples/sales/demo.toml");
