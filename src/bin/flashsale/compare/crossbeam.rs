//! The crossbeam-channel peer: the engine's shard cores behind bounded crossbeam channels
//! (one MPSC request channel per shard, one reply channel per producer): the transport
//! baseline.

use super::*;

/// A shard's answer to a request, on the crossbeam peer.
type PeerReply = (PeerRequest, Outcome);

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
    let max_quantity = max_quantity(scenario);
    // Per shard: one MPSC request channel, as deep as the engine's rings into that shard.
    let (request_tx, request_rx): (Vec<Sender<PeerRequest>>, Vec<Receiver<PeerRequest>>) =
        (0..shards).map(|_| bounded(capacity * producers)).unzip();
    // Per producer: one reply channel, as deep as the engine's rings back.
    let (reply_tx, reply_rx): (Vec<Sender<PeerReply>>, Vec<Receiver<PeerReply>>) =
        (0..producers).map(|_| bounded(capacity * shards)).unzip();
    let workers: Vec<_> = request_rx
        .into_iter()
        .enumerate()
        .map(|(shard, requests)| {
            let mut core = ShardCore::new(&plan.catalog, &placement, ShardId(shard as u16));
            let replies = reply_tx.clone();
            let clock = clock.clone();
            std::thread::spawn(move || {
                for request in requests {
                    let outcome = core
                        .buy(&request.intent, clock.now_ns())
                        .outcome()
                        .expect("compare runs first-come sales: every buy is decided at once");
                    let producer = usize::from(request.producer);
                    if replies[producer].send((request, outcome)).is_err() {
                        break;
                    }
                }
                core
            })
        })
        .collect();
    drop(reply_tx);
    let ran = on_threads(plan, |index, schedule, catalog| {
        let replies = &reply_rx[index];
        let senders = request_tx.clone();
        let mut tally = tally_for(catalog, schedule);
        let mut in_flight = 0u64;
        let take = |tally: &mut ProducerTally, (request, outcome): PeerReply| {
            let now = clock.now_ns();
            run::record(
                tally,
                catalog,
                0,
                request.intent,
                outcome,
                request.sent_ns,
                now,
            );
        };
        for press in schedule {
            tally.submitted += 1;
            let sent_ns = clock.now_ns();
            if let Some(outcome) = validate(&press.intent, catalog, max_quantity) {
                take(
                    &mut tally,
                    (
                        PeerRequest {
                            producer: index as u16,
                            intent: press.intent,
                            sent_ns,
                        },
                        outcome,
                    ),
                );
                continue;
            }
            let catalog_index = catalog.index_of(press.intent.sku).expect("validated");
            let (shard, _) = placement.route(catalog_index);
            let mut request = PeerRequest {
                producer: index as u16,
                intent: press.intent,
                sent_ns,
            };
            loop {
                match senders[usize::from(shard.0)].try_send(request) {
                    Ok(()) => {
                        in_flight += 1;
                        break;
                    }
                    Err(TrySendError::Full(back)) => {
                        request = back;
                        // Full: take the answers waiting for us (a shard may be blocked
                        // sending one), or wait for one.
                        match replies.try_recv() {
                            Ok(reply) => {
                                in_flight -= 1;
                                take(&mut tally, reply);
                            }
                            Err(_) => std::thread::yield_now(),
                        }
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        tally.refused += 1;
                        break;
                    }
                }
            }
            while let Ok(reply) = replies.try_recv() {
                in_flight -= 1;
                take(&mut tally, reply);
            }
        }
        while in_flight > 0 {
            let Ok(reply) = replies.recv() else { break };
            in_flight -= 1;
            take(&mut tally, reply);
        }
        tally
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
