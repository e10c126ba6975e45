//! The crossbeam-channel peer: the engine's shard cores behind bounded crossbeam channels
//! (one MPSC request channel per shard, one reply channel per producer): the transport
//! baseline.

use super::*;

/// A shard's answer to a request, on the crossbeam peer.
type PeerReply = (PeerRequest, Outcome);

/// The most requests a shard of the crossbeam peer takes off its channel at once, as the
/// engine's shard worker takes at most this many off a ring.
const BATCH: usize = 256;

/// A request on the crossbeam peer: who sent it, what, and when.
struct PeerRequest {
    producer: u16,
    intent: Intent,
    sent_ns: u64,
}

pub(super) fn crossbeam_peer(scenario: &Scenario) -> Result<PeerJson, String> {
    let plan = Plan::new(scenario)?;
    let shards = scenario.shards as usize;
    let producers = scenario.producers as usize;
    let capacity = scenario.ring_capacity as usize;
    let placement =
        Placement::new(&plan.catalog, shards).map_err(|error| format!("shards: {error}"))?;
    let clock = EngineClock::start();
    // Per shard: one MPSC request channel, as deep as the engine's rings into that shard.
    let (request_tx, request_rx): (Vec<Sender<PeerRequest>>, Vec<Receiver<PeerRequest>>) =
        (0..shards).map(|_| bounded(capacity * producers)).unzip();
    // Per producer: one reply channel, as deep as the engine's rings back.
    let (reply_tx, reply_rx): (Vec<Sender<PeerReply>>, Vec<Receiver<PeerReply>>) =
        (0..producers).map(|_| bounded(capacity * shards)).unzip();
    let room = scenario
        .order_capacity
        .map(|orders| usize::try_from(orders).unwrap_or(usize::MAX));
    let workers = spawn_shards(
        &plan.catalog,
        &placement,
        room,
        request_rx,
        &reply_tx,
        &clock,
    );
    drop(reply_tx);
    let ran = on_threads(plan, |index, schedule, catalog, tally| {
        let producer = ChannelProducer {
            index: index as u16,
            replies: &reply_rx[index],
            senders: request_tx.clone(),
            clock: &clock,
            placement: &placement,
            max_quantity: max_quantity(scenario),
            latency_sample: scenario.latency_sample,
        };
        producer.run(schedule, catalog, tally)
    })?;
    drop(request_tx);
    let cores = workers
        .into_iter()
        .map(|worker| worker.join())
        .collect::<Result<Vec<ShardCore>, _>>()
        .map_err(|_| "a crossbeam shard thread panicked".to_string())?;
    let decided = cores.iter().map(ShardCore::commands_applied).sum::<u64>()
        + ran.0.rejections[RejectReason::InvalidQuantity.index()]
        + ran.0.rejections[RejectReason::UnknownSku.index()];
    let catalog = &ran.2.catalog;
    let levels: Vec<SkuLevels> = catalog
        .skus()
        .iter()
        .enumerate()
        .map(|(index, sku)| {
            let (shard, _) = placement.route(index);
            cores[usize::from(shard.0)]
                .levels_of(sku.id)
                .expect("placed on that shard")
        })
        .collect();
    Ok(finish(
        "crossbeam",
        "crossbeam-channel + shard cores".into(),
        format!(
            "{} producers, {} shards",
            scenario.producers, scenario.shards
        ),
        scenario,
        ran,
        &levels,
        decided,
    ))
}

/// One thread per shard, deciding the requests of its channel with its own core (with the
/// engine's room for orders) and replying on the asking producer's channel; each returns
/// its core when its channel closes.
fn spawn_shards(
    catalog: &Catalog,
    placement: &Placement,
    room: Option<usize>,
    request_rx: Vec<Receiver<PeerRequest>>,
    reply_tx: &[Sender<PeerReply>],
    clock: &EngineClock,
) -> Vec<std::thread::JoinHandle<ShardCore>> {
    request_rx
        .into_iter()
        .enumerate()
        .map(|(shard, requests)| {
            let mut core =
                ShardCore::with_order_capacity(catalog, placement, ShardId(shard as u16), room);
            let replies = reply_tx.to_vec();
            let clock = clock.clone();
            std::thread::spawn(move || {
                // As the engine's shard worker does: take what has arrived, up to a batch,
                // and decide it with each buy's cache misses started ahead of it.
                let mut batch: Vec<PeerRequest> = Vec::with_capacity(BATCH);
                let mut intents: Vec<Intent> = Vec::with_capacity(BATCH);
                let mut outcomes: Vec<Outcome> = Vec::with_capacity(BATCH);
                while let Ok(first) = requests.recv() {
                    batch.push(first);
                    batch.extend(requests.try_iter().take(BATCH - 1));
                    intents.extend(batch.iter().map(|request| request.intent));
                    core.buy_many(&intents, clock.now_ns(), |_, applied| {
                        outcomes.push(
                            applied.outcome().expect(
                                "compare runs first-come sales: every buy is decided at once",
                            ),
                        );
                    });
                    intents.clear();
                    for (request, outcome) in batch.drain(..).zip(outcomes.drain(..)) {
                        let producer = usize::from(request.producer);
                        if replies[producer].send((request, outcome)).is_err() {
                            return core;
                        }
                    }
                }
                core
            })
        })
        .collect()
}

/// A producer thread of the channel peer.
struct ChannelProducer<'a> {
    index: u16,
    replies: &'a Receiver<PeerReply>,
    senders: Vec<Sender<PeerRequest>>,
    clock: &'a EngineClock,
    placement: &'a Placement,
    max_quantity: u32,
    /// One press in this many is timed.
    latency_sample: u32,
}

impl ChannelProducer<'_> {
    /// Sends every press of `schedule` to its shard (answering malformed ones itself),
    /// taking replies as they come, and waits for the last.
    fn run(
        &self,
        schedule: &[Press],
        catalog: &Catalog,
        mut tally: ProducerTally,
    ) -> ProducerTally {
        let mut in_flight = 0u64;
        let mut sampler = run::Sampler::new(self.latency_sample);
        for press in schedule {
            tally.submitted += 1;
            let request = PeerRequest {
                producer: self.index,
                intent: press.intent,
                sent_ns: tally.sent_at(&mut sampler, || self.clock.now_ns()),
            };
            if let Some(outcome) = validate(&press.intent, catalog, self.max_quantity) {
                self.take(&mut tally, catalog, (request, outcome));
                continue;
            }
            let catalog_index = catalog.index_of(press.intent.sku).expect("validated");
            let (shard, _) = self.placement.route(catalog_index);
            if self.send(
                request,
                usize::from(shard.0),
                &mut tally,
                catalog,
                &mut in_flight,
            ) {
                in_flight += 1;
            }
            while let Ok(reply) = self.replies.try_recv() {
                in_flight -= 1;
                self.take(&mut tally, catalog, reply);
            }
        }
        while in_flight > 0 {
            let Ok(reply) = self.replies.recv() else {
                break;
            };
            in_flight -= 1;
            self.take(&mut tally, catalog, reply);
        }
        tally
    }

    /// Sends one request; while its shard's channel is full, takes the replies waiting
    /// (a shard may be blocked sending one) or yields. Returns whether it was sent.
    fn send(
        &self,
        mut request: PeerRequest,
        shard: usize,
        tally: &mut ProducerTally,
        catalog: &Catalog,
        in_flight: &mut u64,
    ) -> bool {
        loop {
            match self.senders[shard].try_send(request) {
                Ok(()) => return true,
                Err(TrySendError::Full(back)) => {
                    request = back;
                    match self.replies.try_recv() {
                        Ok(reply) => {
                            *in_flight -= 1;
                            self.take(tally, catalog, reply);
                        }
                        Err(_) => std::thread::yield_now(),
                    }
                }
                Err(TrySendError::Disconnected(_)) => {
                    tally.refused += 1;
                    return false;
                }
            }
        }
    }

    fn take(&self, tally: &mut ProducerTally, catalog: &Catalog, (request, outcome): PeerReply) {
        let now = tally.answered_at(request.sent_ns, || self.clock.now_ns());
        run::record(
            tally,
            catalog,
            0,
            request.intent,
            outcome,
            request.sent_ns,
            now,
        );
    }
}
