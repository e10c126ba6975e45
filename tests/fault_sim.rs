//! The fault simulator (`tests/sim`) over thousands of seeds; see that module for what it
//! injects and what it checks after every crash. `cargo test` runs 2,000 seeds.
//! `cargo test --release --test fault_sim -- --ignored` runs seeds for
//! `FLASHSALE_SIM_SECONDS` (default 60) and prints seeds/s; a failing seed prints the line
//! that replays it alone.

mod sim;

use sim::{Ended, check};

#[test]
fn thousands_of_seeds_recover_everything_released() {
    let seeds: u64 = if cfg!(miri) { 5 } else { 2_000 };
    let (mut recovered, mut rot, mut released, mut from_snapshots, mut passed_over) =
        (0, 0, 0, 0, 0);
    for seed in 0..seeds {
        match check(seed) {
            Ended::Recovered {
                released: n,
                from_snapshots: s,
                passed_over: p,
                ..
            } => {
                recovered += 1;
                released += n;
                from_snapshots += s;
                passed_over += p;
            }
            Ended::ReportedRot => rot += 1,
        }
    }
    eprintln!(
        "{seeds} seeds: {recovered} recovered after every crash ({released} released \
         commands checked, {from_snapshots} restarts from a snapshot, {passed_over} rotten \
         snapshots passed over and reported), {rot} refused bit rot by offset"
    );
    assert!(recovered > 0 && rot > 0, "both endings were exercised");
    assert!(from_snapshots > 0, "recovery from snapshots was exercised");
    assert!(passed_over > 0, "rotten snapshots were passed over");
    assert!(
        released > seeds as usize * 50,
        "seeds released work to check"
    );
}

/// `FLASHSALE_SIM_SEED=N`: one seed, for replaying a failure.
#[test]
fn one_seed() {
    if let Some(seed) = std::env::var("FLASHSALE_SIM_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
    {
        eprintln!("seed {seed}: {:?}", check(seed));
    }
}

/// Seeds until `FLASHSALE_SIM_SECONDS` (default 60) pass, printing seeds/s.
#[test]
#[ignore]
fn long_run() {
    let seconds: u64 = std::env::var("FLASHSALE_SIM_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(60);
    let start = std::time::Instant::now();
    let first = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.as_secs() << 20);
    let mut seed = first;
    while start.elapsed().as_secs() < seconds {
        check(seed);
        seed += 1;
        if (seed - first).is_multiple_of(10_000) {
            eprintln!(
                "{} seeds, {:.0} seeds/s",
                seed - first,
                (seed - first) as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "{} seeds from {first} in {seconds} s: {:.0} seeds/s, all held",
        seed - first,
        (seed - first) as f64 / start.elapsed().as_secs_f64()
    );
}
