//! The cluster peer (`--nats URLS`, feature `cluster`): the scenario through a sale on NATS
//! JetStream, and what `--nats` says without the feature.

#[cfg(not(all(feature = "cluster", not(loom))))]
pub use absent::{check, run};
#[cfg(all(feature = "cluster", not(loom)))]
pub use real::{check, run};

#[cfg(all(feature = "cluster", not(loom)))]
pub use real::{levels_of, on_throwaway_sale};

/// `--nats` and its knobs, for `compare` and `simulate`.
#[derive(clap::Args)]
pub struct NatsArgs {
    /// NATS servers (comma-separated URLs) to run the sale on: a throwaway sale with its
    /// own streams (deleted after), one partition per shard, an engine node and a gateway
    /// in this process. Needs the `cluster` feature and JetStream on the servers.
    #[arg(long)]
    pub nats: Option<String>,
    /// Copies JetStream keeps of each of the sale's logs (3 on a 3-server cluster).
    #[arg(long, default_value_t = 3)]
    pub nats_replicas: usize,
    /// Buys in flight through the cluster at once: a replicated log is carried by
    /// batching, so it needs many.
    #[arg(long, default_value_t = 4096)]
    pub nats_in_flight: u32,
}

impl NatsArgs {
    /// The knobs, checked; `None` without `--nats`.
    pub fn knobs(&self) -> Result<Option<ClusterKnobs>, String> {
        if !(1..=5).contains(&self.nats_replicas) {
            return Err(format!(
                "nats-replicas: must be 1..=5, got {}",
                self.nats_replicas
            ));
        }
        if !(1..=65_536).contains(&self.nats_in_flight) {
            return Err(format!(
                "nats-in-flight: must be 1..=65536, got {}",
                self.nats_in_flight
            ));
        }
        Ok(self.nats.as_ref().map(|urls| ClusterKnobs {
            urls: urls.clone(),
            replicas: self.nats_replicas,
            in_flight: self.nats_in_flight,
        }))
    }
}

/// `urls` (comma-separated) with any credentials taken out, for logs and reports.
pub fn without_credentials(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            match url.split_once("://") {
                Some((scheme, rest)) => match rest.rsplit_once('@') {
                    Some((_, host)) => format!("{scheme}://{host}"),
                    None => url.to_owned(),
                },
                None => url
                    .rsplit_once('@')
                    .map_or(url, |(_, host)| host)
                    .to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// How a run on the cluster goes.
#[cfg_attr(
    not(all(feature = "cluster", not(loom))),
    allow(dead_code, reason = "read only with the cluster feature")
)]
pub struct ClusterKnobs {
    /// The NATS servers, comma-separated.
    pub urls: String,
    /// Copies JetStream keeps of each log.
    pub replicas: usize,
    /// Buys awaiting their answers at once, shared among the producers.
    pub in_flight: u32,
}

#[cfg(all(feature = "cluster", not(loom)))]
mod real {
    //! The scenario through the cluster: a throwaway sale (its own streams and buckets,
    //! deleted at the end) with one partition per shard of the scenario, an engine node and
    //! a gateway in this process, the log replicated by the NATS servers.

    use std::sync::Arc;
    use std::time::{SystemTime, UNIX_EPOCH};

    use flashsale::Policy;
    use flashsale::cluster::nats::{JETSTREAM_WITHIN, SaleOnNats, check_jetstream, connect};
    use flashsale::cluster::{
        Gateway, GatewayConfig, NodeConfig, NodeLatency, PartitionStatus, run_node,
    };
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;
    use tokio::sync::watch;

    use super::super::*;
    use super::ClusterKnobs;

    /// A press, its send instant (or [`run::UNTIMED`]) and the cluster's answer.
    type Answered = (
        Press,
        u64,
        Result<flashsale::cluster::Decided, flashsale::cluster::GatewayError>,
    );

    /// A node that has not led every partition this long after the start is an error.
    const READY_WITHIN: Duration = Duration::from_secs(60);

    /// A buy with no answer this long after the last it could be waiting for is refused.
    const GIVE_UP: Duration = Duration::from_secs(120);

    /// The sale's clock now: ns since its zero, `epoch`.
    fn sale_now_ns(epoch: SystemTime) -> u64 {
        SystemTime::now().duration_since(epoch).map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
    }

    /// How long from `now_ns` (the sale's clock) until the last wait the catalog allows
    /// ends: its latest finite window close (waitlists are answered then) or draw (pooled
    /// presses are answered once their pool is served, right after its window).
    fn waits_end(catalog: &Catalog, now_ns: u64) -> Duration {
        let end_ns = catalog
            .skus()
            .iter()
            .map(|sku| {
                let window = sku.window;
                let drawn = match catalog.policy_of(sku) {
                    Policy::OpeningDraw { window_ns, .. } | Policy::OneEachFirst { window_ns } => {
                        window.opens_at_ns.saturating_add(window_ns)
                    }
                    Policy::FirstCome => 0,
                };
                let closes = if window.closes_at_ns == u64::MAX {
                    0
                } else {
                    window.closes_at_ns
                };
                drawn.max(closes)
            })
            .max()
            .unwrap_or(0);
        Duration::from_nanos(end_ns.saturating_sub(now_ns))
    }

    /// Whether the NATS servers take a connection, checked before any peer runs, so that
    /// a wrong address is refused before the in-process rows rather than after them.
    pub fn check(knobs: &ClusterKnobs) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| format!("nats: cannot start the runtime: {error}"))?;
        runtime
            .block_on(async {
                let client = connect(&knobs.urls, "flashsale-compare-check").await?;
                check_jetstream(&client, JETSTREAM_WITHIN).await
            })
            .map_err(|error| format!("nats: {error}"))
    }

    pub fn run(scenario: &Scenario, knobs: &ClusterKnobs) -> Result<PeerJson, String> {
        let plan = Plan::new(scenario)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|error| format!("nats: cannot start the runtime: {error}"))?;
        runtime.block_on(run_on_cluster(scenario, plan, knobs))
    }

    async fn run_on_cluster(
        scenario: &Scenario,
        plan: Plan,
        knobs: &ClusterKnobs,
    ) -> Result<PeerJson, String> {
        let catalog = plan.catalog.clone();
        let (ran, levels) = on_throwaway_sale(
            "compare",
            scenario,
            &catalog,
            knobs,
            |gateway, _epoch, _node_latency| async move {
                let ran = buy_all(&gateway, plan, scenario, knobs.in_flight).await?;
                let levels = levels_of(&gateway, &ran.2.catalog).await?;
                Ok((ran, levels))
            },
        )
        .await?;
        let decided = ran.0.outcomes;
        Ok(finish(
            "cluster",
            format!(
                "cluster: gateway + node on NATS JetStream (R{})",
                knobs.replicas
            ),
            format!("{} buys in flight", knobs.in_flight),
            scenario,
            ran,
            &levels,
            decided,
        ))
    }

    /// A throwaway sale (`<prefix>-<pid>-<time>`, one partition per shard of the scenario)
    /// on the cluster, with an engine node and a gateway in this process: runs `body` with
    /// the gateway, the sale clock's zero and the histogram the node records its answers'
    /// latency into (from the entry's stamp in the log), then stops the node and deletes
    /// the sale's streams, buckets and snapshot store, whatever `body` returned.
    pub async fn on_throwaway_sale<R, F, Fut>(
        prefix: &str,
        scenario: &Scenario,
        catalog: &Catalog,
        knobs: &ClusterKnobs,
        body: F,
    ) -> Result<R, String>
    where
        F: FnOnce(Gateway, SystemTime, NodeLatency) -> Fut,
        Fut: std::future::Future<Output = Result<R, String>>,
    {
        let nats = |error: flashsale::cluster::nats::NatsError| format!("nats: {error}");
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() % 100_000_000);
        let name = format!("{prefix}-{}-{stamp}", std::process::id());
        let partitions = u16::try_from(scenario.shards).map_err(|_| "shards: too many")?;
        let sale = SaleOnNats::new(&name, partitions, knobs.replicas).map_err(nats)?;
        let client = connect(&knobs.urls, &format!("flashsale-{prefix}"))
            .await
            .map_err(nats)?;
        check_jetstream(&client, JETSTREAM_WITHIN)
            .await
            .map_err(nats)?;
        let lease = Duration::from_secs(2);
        // A new sale's streams and buckets elect their leaders as they are made: a read
        // right after can find no responder. Retry for a while, as a node does.
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        let opened = loop {
            match sale.open(client.clone(), lease).await {
                Ok(opened) => break opened,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => return Err(nats(error)),
            }
        };
        let max_quantity = max_quantity(scenario);
        let (status, mut watching) = watch::channel(Vec::<PartitionStatus>::new());
        let (stop, stopping) = watch::channel(false);
        let node_latency: NodeLatency = Arc::new(parking_lot::Mutex::new(
            flashsale::report::latency_histogram(),
        ));
        let node = tokio::spawn(run_node(
            client.clone(),
            sale.clone(),
            opened.clone(),
            catalog.clone(),
            NodeConfig {
                id: format!("{name}-node"),
                lease,
                snapshot_every: 100_000,
                max_quantity,
                order_capacity: scenario.order_capacity.map(|orders| orders as usize),
                latency: Some(node_latency.clone()),
            },
            Some(status),
            stopping,
        ));
        let epoch = opened.epoch();
        let outcome = async {
            led_and_reading(&mut watching).await?;
            let gateway = Gateway::connect_opened(
                client.clone(),
                sale.clone(),
                opened,
                catalog.clone(),
                GatewayConfig {
                    max_quantity,
                    // Nothing is killed here, but an answer can still be lost (a lease
                    // renewed late on a loaded machine moves the partition's leadership,
                    // a batch goes unacked): a buy unanswered for 5 s is published again,
                    // as a shop's gateway would (its idempotency key makes that safe), and
                    // one unanswered for two minutes is counted refused.
                    resubmit_after: Duration::from_secs(5),
                    give_up_after: GIVE_UP,
                    // A waiting buy is not published again (its key is in the pool or on
                    // the waitlist): one whose answer was lost is counted refused two
                    // minutes after the sale's last wait could end, not after an hour.
                    wait_at_most: waits_end(catalog, sale_now_ns(epoch)) + GIVE_UP,
                    ..GatewayConfig::default()
                },
            )
            .await
            .map_err(nats)?;
            body(gateway, epoch, node_latency).await
        }
        .await;
        let _ = stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), node).await;
        let removed = sale.remove(client).await;
        let outcome = outcome?;
        removed.map_err(nats)?;
        Ok(outcome)
    }

    /// Waits until the node leads every partition and reads its log.
    async fn led_and_reading(
        watching: &mut watch::Receiver<Vec<PartitionStatus>>,
    ) -> Result<(), String> {
        let ready = |statuses: &Vec<PartitionStatus>| {
            !statuses.is_empty()
                && statuses
                    .iter()
                    .all(|status| status.leading && status.reader_restarts > 0)
        };
        tokio::time::timeout(READY_WITHIN, watching.wait_for(ready))
            .await
            .map_err(|_| {
                format!(
                    "nats: the engine node did not lead every partition within {} s",
                    READY_WITHIN.as_secs()
                )
            })?
            .map(|_| ())
            .map_err(|_| "nats: the engine node stopped before it was ready".to_string())
    }

    /// Every press through the gateway: one task per producer schedule, each submitting its
    /// presses in schedule order (so a retry reaches the log after the press it retries)
    /// with up to its share of `in_flight` buys awaiting their answers, counted in the
    /// task's own tally.
    async fn buy_all(
        gateway: &Gateway,
        mut plan: Plan,
        scenario: &Scenario,
        in_flight: u32,
    ) -> Result<(ProducerTally, Duration, Plan), String> {
        let schedules = std::mem::take(&mut plan.schedules);
        let share = (in_flight as usize / schedules.len().max(1)).max(1);
        let catalog = Arc::new(plan.catalog.clone());
        let clock = Arc::new(EngineClock::start());
        // Made before the clock starts, as every peer's are (see `on_threads`).
        let tallies = ProducerTally::for_schedules(
            &schedules,
            catalog.skus().len(),
            1,
            catalog.total_stock(),
        );
        let started = Instant::now();
        let mut running = tokio::task::JoinSet::new();
        for (schedule, mut tally) in schedules.into_iter().zip(tallies) {
            let (gateway, catalog, clock) = (gateway.clone(), catalog.clone(), clock.clone());
            let sample = scenario.latency_sample;
            // Outside tokio's cooperative budget: past about 128 awaits a turn, each
            // buy's answer would read "not yet" and wake itself, and every turn of this
            // task would walk thousands of futures that cannot finish (the measurement
            // then timed itself, at a fraction of the cluster's rate). It still yields
            // whenever none of its buys is ready.
            running.spawn(tokio::task::unconstrained(async move {
                let mut sampler = run::Sampler::new(sample);
                let mut waiting = FuturesUnordered::new();
                let record =
                    |tally: &mut ProducerTally, (press, sent, decided): Answered| match decided {
                        Ok(decided) => {
                            let now = tally.answered_at(sent, || clock.now_ns());
                            run::record_published(
                                tally,
                                &catalog,
                                0,
                                press.intent,
                                decided.outcome,
                                decided.attempts,
                                sent,
                                now,
                            );
                        }
                        Err(_) => tally.refused += 1,
                    };
                for press in schedule {
                    while waiting.len() >= share {
                        if let Some(answered) = waiting.next().await {
                            record(&mut tally, answered);
                        }
                    }
                    tally.submitted += 1;
                    let sent = tally.sent_at(&mut sampler, || clock.now_ns());
                    // Queued now, in the schedule's order; awaited with the others.
                    let answer = gateway.buy(press.intent, false);
                    waiting.push(async move { (press, sent, answer.await) });
                }
                while let Some(answered) = waiting.next().await {
                    record(&mut tally, answered);
                }
                tally
            }));
        }
        let mut total = ProducerTally::new(plan.catalog.skus().len(), 1, 0);
        while let Some(joined) = running.join_next().await {
            total.merge(joined.map_err(|_| "a buying task panicked".to_string())?);
        }
        let elapsed = started.elapsed();
        run::settle_recovered(&mut total, &catalog, 0);
        Ok((total, elapsed, plan))
    }

    /// Every SKU's levels as the partitions' leaders report them, in catalog order.
    pub async fn levels_of(gateway: &Gateway, catalog: &Catalog) -> Result<Vec<SkuLevels>, String> {
        let sales = gateway
            .sales()
            .await
            .map_err(|error| format!("nats: reading the levels: {error}"))?;
        let mut levels: Vec<Option<SkuLevels>> = vec![None; catalog.skus().len()];
        for sale in sales {
            if let Some(index) = catalog.index_of(sale.levels.id) {
                levels[index] = Some(sale.levels);
            }
        }
        levels
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "nats: a partition did not report its SKUs' levels".to_string())
    }
}

#[cfg(not(all(feature = "cluster", not(loom))))]
mod absent {
    //! Without the `cluster` feature, `--nats` explains how to get it.

    use super::super::*;
    use super::ClusterKnobs;

    const ABSENT: &str = "nats: this build has no cluster peer; build with `--features cluster`";

    pub fn check(_: &ClusterKnobs) -> Result<(), String> {
        Err(ABSENT.into())
    }

    pub fn run(_: &Scenario, _: &ClusterKnobs) -> Result<PeerJson, String> {
        Err(ABSENT.into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_taken_out_of_urls() {
        assert_eq!(
            super::without_credentials(
                "nats://user:p%40ss@a:4222, nats://token@b, nats://c:4222,d,e:f@g:1"
            ),
            "nats://a:4222,nats://b,nats://c:4222,d,g:1"
        );
    }
}
