//! A small sneaker drop, end to end: 12 variants (6 sizes x 2 colours) of one trainer,
//! 5,000 pairs, at most 2 pairs per buyer across the variants; 400,000 buyers press "buy"
//! from two request threads, some press twice (a retry with the same key), a few send
//! malformed intents. Prints the engine's report and checks the books balance.
//!
//! Run: `cargo run --release --example quickstart`.

use std::collections::HashMap;
use std::time::Instant;

use flashsale::{
    Catalog, Completion, Engine, GroupId, Intent, Outcome, RejectReason, SkuId, SkuSpec,
    SubmitError, Submitted, UserId,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BUYERS: u64 = 400_000;
const PRODUCERS: u64 = 2;
const SIZES: [&str; 6] = ["EU 40", "EU 41", "EU 42", "EU 43", "EU 44", "EU 45"];
const COLOURS: [&str; 2] = ["black", "white"];
/// Pairs per size: the middle sizes get more stock, as they sell more.
const PAIRS_PER_SIZE: [u32; 6] = [250, 400, 550, 550, 500, 250];
/// Size indexes, each as often as buyers pick it (weights 1, 3, 5, 5, 3, 1).
const POPULARITY: [u32; 18] = [0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 5];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let trainers = GroupId(1);
    let mut skus = Vec::new();
    for (size_index, size) in SIZES.iter().enumerate() {
        for (colour_index, colour) in COLOURS.iter().enumerate() {
            let id = SkuId((size_index * COLOURS.len() + colour_index) as u32 + 1);
            skus.push(
                SkuSpec::new(id, PAIRS_PER_SIZE[size_index])
                    .limit(2)
                    .group(trainers)
                    .labels("Aurora trainer", format!("{size} {colour}")),
            );
        }
    }
    let catalog = Catalog::builder().group(trainers, 2).skus(skus).build()?;
    let stock = catalog.total_stock();
    let engine = Engine::builder(catalog).max_quantity(2).start()?;

    let started = Instant::now();
    let threads: Vec<_> = (0..PRODUCERS)
        .map(|thread| {
            let mut producer = engine.producer();
            std::thread::spawn(move || {
                let mut random = 0x2545_F491_4F6C_DD1D_u64 ^ thread;
                let mut next = move || {
                    random ^= random << 13;
                    random ^= random >> 7;
                    random ^= random << 17;
                    random
                };
                let mut presses = 0u64;
                // Each thread submits for its own buyers, so it sees all of their orders.
                let mut pairs_of_buyer: HashMap<UserId, u32> = HashMap::new();
                let mut tally = |completion: Completion| {
                    if let Outcome::Confirmed(order) = completion.outcome {
                        *pairs_of_buyer.entry(order.user).or_default() += order.quantity;
                    }
                };
                for user in (thread..BUYERS).step_by(PRODUCERS as usize) {
                    let roll = next();
                    // Middle sizes are pressed more often.
                    let size = POPULARITY[(roll % POPULARITY.len() as u64) as usize];
                    let sku = SkuId(size * 2 + (roll >> 8) as u32 % 2 + 1);
                    let quantity = match roll >> 16 & 0xFF {
                        0..=1 => 0, // malformed: rejected at submit
                        2..=40 => 2,
                        _ => 1,
                    };
                    let intent = Intent {
                        user: UserId(user),
                        client_key: 1,
                        sku,
                        quantity,
                    };
                    // One buyer in ten is impatient and presses again with the same key.
                    let copies = if roll >> 24 & 0xF < 2 { 2 } else { 1 };
                    for _ in 0..copies {
                        presses += 1;
                        let mut pending = intent;
                        loop {
                            match producer.submit(pending) {
                                Ok(Submitted::Queued(_) | Submitted::Answered(_)) => break,
                                Err(SubmitError::Busy(back)) => {
                                    pending = back;
                                    // Three threads share two cores here: give the shard
                                    // the CPU rather than spinning on a full lane.
                                    if producer.poll(&mut tally) == 0 {
                                        std::thread::yield_now();
                                    }
                                }
                                Err(refused) => panic!("refused: {refused}"),
                            }
                        }
                    }
                    producer.poll(&mut tally);
                }
                producer.drain(&mut tally);
                let most_pairs = pairs_of_buyer.values().copied().max().unwrap_or(0);
                (presses, most_pairs)
            })
        })
        .collect();
    let mut presses = 0;
    let mut most_pairs = 0;
    for thread in threads {
        let (thread_presses, thread_most_pairs) = thread.join().expect("producer thread");
        presses += thread_presses;
        most_pairs = most_pairs.max(thread_most_pairs);
    }
    let elapsed = started.elapsed();
    let report = engine.shutdown();

    println!("{report}");
    println!(
        "{presses} presses from {BUYERS} buyers in {:.1} ms: {:.1} M intents/s",
        elapsed.as_secs_f64() * 1e3,
        presses as f64 / elapsed.as_secs_f64() / 1e6
    );
    // The books balance: every press has exactly one outcome, and the stock is sold
    // exactly (demand far exceeds it, so nothing may be left).
    assert_eq!(report.outcomes(), presses);
    assert_eq!(report.confirmed_units, stock);
    assert!(
        report
            .skus
            .iter()
            .all(|sku| sku.held + sku.available == sku.stock)
    );
    assert!(report.rejected(RejectReason::Duplicate(flashsale::OrderId(0))) > 0);
    assert!(most_pairs <= 2, "a buyer got {most_pairs} pairs");
    println!(
        "checks: one outcome per press, {stock} pairs sold exactly, \
         no buyer above 2 pairs (most: {most_pairs})"
    );
    Ok(())
}
