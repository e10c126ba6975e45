//! How long a buy of another product waits while its shard serves a big opening draw.
//!
//! One shard sells two products: an opening draw (100,000 units, one per buyer) that a
//! million buyers enter during its window, and a first-come product. When the draw's
//! window closes, one thread buys the first-come product in a closed loop (one buy at a
//! time, each timed) until every ticket of the draw has its outcome. Run twice in one
//! process: with the pool served in one go (`pool_slice(u32::MAX)`, as before slicing)
//! and in the default slices; the figures to compare are the two runs' longest waits.
//!
//! ```text
//! cargo run --release --example draw_stall                # 1,000,000 tickets
//! cargo run --release --example draw_stall -- 200000      # fewer
//! cargo run --release --example draw_stall -- 1000000 256 # another slice
//! ```

use std::time::{Duration, Instant};

use flashsale::{
    Catalog, Engine, Intent, Outcome, POOL_SLICE_DEFAULT, Policy, SaleWindow, SkuId, SkuSpec,
    SubmitError, Submitted, UserId,
};
use hdrhistogram::Histogram;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DRAW: SkuId = SkuId(1);
const FIRST_COME: SkuId = SkuId(2);

struct Run {
    /// Waits of the first-come buys made while the draw was served, ns.
    waits: Histogram<u64>,
    /// From the window's close to the draw's last outcome.
    served_in: Duration,
    confirmed: u64,
}

fn run(tickets: u64, slice: u32) -> Run {
    // Long enough for every ticket to be entered first, on a slow machine too.
    let window_ns = 2_000_000_000 + tickets * 2_000;
    let window = SaleWindow {
        opens_at_ns: 0,
        closes_at_ns: u64::MAX,
    };
    let catalog = Catalog::builder()
        .pool_slice(slice)
        .sku(
            SkuSpec::new(DRAW, 100_000)
                .window(window)
                .policy(Policy::OpeningDraw { window_ns, seed: 7 }),
        )
        .sku(SkuSpec::new(FIRST_COME, u32::MAX / 2).window(window))
        .build()
        .expect("a valid catalog");
    let engine = Engine::builder(catalog)
        .shards(1)
        .order_capacity(200_000)
        .start()
        .expect("the engine starts");
    let mut producer = engine.producer();
    let mut answered = 0u64;
    let mut confirmed = 0u64;
    let count = |outcome: Outcome, answered: &mut u64, confirmed: &mut u64| {
        *answered += 1;
        *confirmed += u64::from(matches!(outcome, Outcome::Confirmed(_)));
    };
    for user in 0..tickets {
        let mut intent = Intent {
            user: UserId(user),
            client_key: 0,
            sku: DRAW,
            quantity: 1,
        };
        loop {
            match producer.submit(intent) {
                Ok(Submitted::Queued(_)) => break,
                Ok(Submitted::Answered(outcome)) => panic!("a ticket was answered: {outcome:?}"),
                Err(SubmitError::Busy(back)) => {
                    intent = back;
                    producer.poll(|done| count(done.outcome, &mut answered, &mut confirmed));
                }
                Err(error) => panic!("{error}"),
            }
        }
    }
    assert!(
        producer.now_ns() < window_ns,
        "every ticket is in before the window closes"
    );
    // Wait for the window to close, then buy the other product until the draw is served.
    while producer.now_ns() < window_ns {
        std::thread::sleep(Duration::from_millis(1));
    }
    let closed = Instant::now();
    let mut waits = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).expect("a histogram");
    let mut user = tickets;
    let mut last = closed;
    while answered < tickets {
        user += 1;
        let intent = Intent {
            user: UserId(user),
            client_key: 0,
            sku: FIRST_COME,
            quantity: 1,
        };
        let started = Instant::now();
        let outcome = producer.buy(intent).expect("the engine runs");
        waits.saturating_record(started.elapsed().as_nanos() as u64);
        assert!(matches!(outcome, Outcome::Confirmed(_)), "{outcome:?}");
        producer.poll(|done| {
            count(done.outcome, &mut answered, &mut confirmed);
            last = Instant::now();
        });
        assert!(
            closed.elapsed() < Duration::from_secs(120),
            "the draw is served"
        );
    }
    engine.shutdown();
    Run {
        waits,
        served_in: last - closed,
        confirmed,
    }
}

fn main() {
    let tickets: u64 = std::env::args()
        .nth(1)
        .map(|arg| arg.parse().expect("TICKETS is a number"))
        .unwrap_or(1_000_000);
    let slice: u32 = std::env::args()
        .nth(2)
        .map(|arg| arg.parse().expect("SLICE is a number of steps above 0"))
        .unwrap_or(POOL_SLICE_DEFAULT);
    println!(
        "an opening draw of {tickets} tickets (100,000 units) and a first-come product on one \
         shard; first-come buys, one at a time, while the draw is served"
    );
    println!(
        "{:>22} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "pool served", "buys", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "served in ms"
    );
    let mut longest = Vec::new();
    for (name, slice) in [
        ("at once".to_owned(), u32::MAX),
        (format!("in slices of {slice}"), slice),
    ] {
        let run = run(tickets, slice);
        assert_eq!(
            run.confirmed,
            100_000.min(tickets),
            "the draw sells its units"
        );
        let us = |ns: u64| ns as f64 / 1_000.0;
        println!(
            "{name:>22} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>12.1}",
            run.waits.len(),
            us(run.waits.value_at_quantile(0.5)),
            us(run.waits.value_at_quantile(0.99)),
            us(run.waits.value_at_quantile(0.999)),
            us(run.waits.max()),
            run.served_in.as_secs_f64() * 1_000.0
        );
        longest.push(run.waits.max());
    }
    println!(
        "longest wait, at once / in slices: {:.0}x",
        longest[0] as f64 / longest[1].max(1) as f64
    );
}
