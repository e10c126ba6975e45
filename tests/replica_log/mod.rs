//! A partition's log for the replica's tests and the `replica_log` fuzz target: a small
//! catalog with every kind of rule, random logs of buys, operator commands, ticks and damaged
//! messages, and what the reference model answers to a log.

use flashsale::cluster::wire::{self, BatchWriter, Buy, Control};
use flashsale::cluster::{Answer, Reply};
use flashsale::reference::Model;
use flashsale::workload::Rng;
use flashsale::{
    Applied, Catalog, Command, GroupId, GroupSpec, Intent, OrderId, Policy, SaleWindow, SkuId,
    SkuSpec, UserId,
};

pub const MAX_QUANTITY: u32 = 3;

/// Holds that expire, a waitlist, a limit group, an opening draw (served two steps a
/// tick, so that snapshots land part way through it), and a SKU (9) that is not in the
/// catalog at all.
pub fn catalog() -> Catalog {
    Catalog::builder()
        .pool_slice(2)
        .group(GroupId(1), 2)
        .sku(
            SkuSpec::new(SkuId(1), 6)
                .group(GroupId(1))
                .hold(4_000)
                .waitlist(4),
        )
        .sku(SkuSpec::new(SkuId(2), 4).group(GroupId(1)).hold(9_000))
        .sku(SkuSpec::new(SkuId(3), 30).limit(3))
        .group_spec(GroupSpec::new(GroupId(2), 1).policy(Policy::OpeningDraw {
            window_ns: 20_000,
            seed: 7,
        }))
        .sku(SkuSpec::new(SkuId(4), 5).group(GroupId(2)))
        .sku(SkuSpec::new(SkuId(5), 3).waitlist(2).hold(2_000))
        .build()
        .unwrap()
}

/// One log entry: its stamp and bytes.
pub struct Entry {
    pub stamp_ns: u64,
    pub payload: Vec<u8>,
}

/// A random log: batches of buys (some malformed), operator commands, ticks, damaged
/// messages, and stamps that sometimes go back (a log leader that moved).
pub fn log(seed: u64, entries: usize) -> Vec<Entry> {
    let mut rng = Rng::new(seed);
    let mut now = 0u64;
    let mut request = 0u64;
    (0..entries)
        .map(|_| {
            now += rng.below(1_500);
            let stamp_ns = now.saturating_sub(rng.below(4) * 700);
            let gateway = 1 + rng.below(3);
            request += 1;
            let payload = match rng.below(20) {
                0..=12 => {
                    let mut batch = BatchWriter::new(gateway);
                    for _ in 0..1 + rng.below(6) {
                        request += 1;
                        batch.push(&Buy {
                            request,
                            intent: Intent {
                                user: UserId(1 + rng.below(12)),
                                client_key: rng.below(40),
                                sku: SkuId(if rng.below(30) == 0 {
                                    9
                                } else {
                                    1 + rng.below(5) as u32
                                }),
                                quantity: rng.below(u64::from(MAX_QUANTITY) + 2) as u32,
                            },
                            wait: rng.below(3) == 0,
                        });
                    }
                    batch.finish()
                }
                13..=16 => {
                    let sku = SkuId(1 + rng.below(5) as u32);
                    let control = match rng.below(6) {
                        0 => Control::Pay(OrderId(rng.below(20))),
                        1 => Control::Cancel(OrderId(rng.below(20))),
                        2 => Control::Restock {
                            sku,
                            units: rng.below(3) as u32,
                        },
                        3 => Control::Reduce {
                            sku,
                            units: rng.below(3) as u32,
                        },
                        4 => Control::SetWindow {
                            sku,
                            window: SaleWindow {
                                opens_at_ns: now,
                                closes_at_ns: now + rng.below(200_000),
                            },
                        },
                        _ => Control::Close(sku),
                    };
                    wire::encode_control(gateway, request, &control)
                }
                17 | 18 => wire::encode_tick(0),
                _ => {
                    let mut damaged = wire::encode_tick(0);
                    let at = rng.below(damaged.len() as u64) as usize;
                    damaged[at] ^= 1 << rng.below(8);
                    damaged
                }
            };
            Entry { stamp_ns, payload }
        })
        .collect()
}

/// What the log should answer, from the reference model fed each valid message's commands
/// at the clamped stamp, with the waiting buys' requests remembered by sequence here.
pub fn expected(catalog: &Catalog, log: &[Entry]) -> Vec<Reply> {
    let mut model = Model::whole(catalog);
    let mut waiting = std::collections::HashMap::new();
    let mut clock = 0u64;
    let mut replies = Vec::new();
    let mut run =
        |model: &mut Model, replies: &mut Vec<Reply>, command: Option<Command>, to: (u64, u64)| {
            if let Some(command) = command {
                let applied = model.apply(&command);
                if let Applied::Waiting { sequence } = applied {
                    waiting.insert(sequence, to);
                }
                if to.0 != u64::MAX {
                    replies.push(Reply {
                        gateway: to.0,
                        request: to.1,
                        answer: Answer::Applied(applied),
                    });
                }
            }
            for deferred in model.take_deferred() {
                let (gateway, request) = waiting.remove(&deferred.origin).expect("it waited");
                replies.push(Reply {
                    gateway,
                    request,
                    answer: Answer::Deferred(deferred.outcome),
                });
            }
        };
    for entry in log {
        clock = clock.max(entry.stamp_ns);
        let Ok(message) = wire::decode(&entry.payload) else {
            continue;
        };
        match message.body {
            wire::Body::Buys(buys) => {
                for buy in buys.iter() {
                    let to = (message.sender, buy.request);
                    if buy.intent.quantity == 0 || buy.intent.quantity > MAX_QUANTITY {
                        replies.push(Reply {
                            gateway: to.0,
                            request: to.1,
                            answer: Answer::Screened(flashsale::RejectReason::InvalidQuantity),
                        });
                        continue;
                    }
                    let command = if buy.wait {
                        Command::BuyOrWait {
                            intent: buy.intent,
                            arrival_ns: clock,
                        }
                    } else {
                        Command::Buy {
                            intent: buy.intent,
                            arrival_ns: clock,
                        }
                    };
                    run(&mut model, &mut replies, Some(command), to);
                }
            }
            wire::Body::Control { request, control } => run(
                &mut model,
                &mut replies,
                Some(control.at(clock)),
                (message.sender, request),
            ),
            wire::Body::Tick => run(
                &mut model,
                &mut replies,
                Some(Command::Tick { now_ns: clock }),
                (u64::MAX, 0),
            ),
        }
    }
    replies
}
