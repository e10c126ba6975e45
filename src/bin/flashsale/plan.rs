//! Turns a [`Scenario`] into a catalog and each producer's schedule of presses.

use flashsale::{Catalog, GroupId, GroupSpec, Intent, SaleWindow, SkuId, SkuSpec, UserId};

use crate::scenario::{Mode, Scenario};

pub use flashsale::workload::Rng;

/// One press: when it should be sent (ns after the run's start) and what it asks.
#[derive(Debug, Clone, Copy)]
pub struct Press {
    pub at_ns: u64,
    pub intent: Intent,
}

/// Everything a run needs, made before the engine starts.
pub struct Plan {
    pub catalog: Catalog,
    /// Per producer, presses in send order.
    pub schedules: Vec<Vec<Press>>,
    /// Engine-clock instant the schedules count from (a lead time after engine start).
    pub start_ns: u64,
    /// Per product (group) index: when its sale opens, ns after the run's start.
    pub opens_ns: Vec<u64>,
    /// When the last press is scheduled, ns after the run's start.
    pub last_press_ns: u64,
    pub presses: u64,
    /// What an open loop offers: presses per second over the schedule, on average and in
    /// its busiest 10 ms.
    pub offered: Offered,
}

/// The load a schedule offers (meaningful for an open loop; a closed one offers as fast
/// as the engine takes).
#[derive(Debug, Clone, Copy)]
pub struct Offered {
    pub mean_per_s: f64,
    pub peak_per_s: f64,
}

impl Offered {
    /// From presses sorted by time.
    fn of(presses: &[Press]) -> Self {
        const WINDOW_NS: u64 = 10_000_000;
        let span_ns = presses.last().map_or(0, |press| press.at_ns).max(WINDOW_NS);
        let (mut peak, mut count, mut window) = (0u64, 0u64, 0u64);
        for press in presses {
            let this = press.at_ns / WINDOW_NS;
            if this != window {
                peak = peak.max(count);
                (count, window) = (0, this);
            }
            count += 1;
        }
        peak = peak.max(count);
        Self {
            mean_per_s: presses.len() as f64 / (span_ns as f64 / 1e9),
            peak_per_s: peak as f64 * (1e9 / WINDOW_NS as f64),
        }
    }
}

/// Lead time between engine start and the first scheduled press, for thread start-up.
const LEAD_NS: u64 = 50_000_000;

fn scaled_ns(scenario: &Scenario, ms: f64) -> u64 {
    (ms * 1e6 / scenario.speed) as u64
}

/// Variant weights, most popular first, summing to 1.
fn zipf_weights(variants: u32, exponent: f64) -> Vec<f64> {
    let raw: Vec<f64> = (1..=variants)
        .map(|rank| 1.0 / f64::from(rank).powf(exponent))
        .collect();
    let total: f64 = raw.iter().sum();
    raw.into_iter().map(|weight| weight / total).collect()
}

/// Splits a product's stock over its variants by weight, each at least 1 unit.
fn split_stock(stock: u32, weights: &[f64]) -> Vec<u32> {
    let mut split: Vec<u32> = weights
        .iter()
        .map(|weight| ((f64::from(stock) * weight) as u32).max(1))
        .collect();
    let assigned: u32 = split.iter().sum();
    if assigned < stock {
        split[0] += stock - assigned;
    } else {
        let mut excess = assigned - stock;
        for units in split.iter_mut().rev() {
            let take = excess.min(*units - 1);
            *units -= take;
            excess -= take;
        }
    }
    split
}

impl Plan {
    pub fn new(scenario: &Scenario) -> Result<Self, String> {
        Self::with_lead(scenario, LEAD_NS)
    }

    /// Like [`new`](Self::new), with the schedules starting `lead_ns` after the clock's
    /// zero (a sale on a cluster needs seconds to elect its leaders first).
    pub fn with_lead(scenario: &Scenario, lead_ns: u64) -> Result<Self, String> {
        let weights = zipf_weights(scenario.variants_per_product, scenario.zipf_exponent);
        let countdown_ns = scaled_ns(scenario, scenario.countdown_ms as f64);
        let timed = scenario.mode == Mode::Open && scenario.rate.is_none();
        let opens_ns: Vec<u64> = (0..scenario.products_per_seller)
            .map(|product| {
                if timed {
                    countdown_ns
                        + scaled_ns(
                            scenario,
                            (u64::from(product) * scenario.wave_interval_ms) as f64,
                        )
                } else {
                    0
                }
            })
            .collect();
        let catalog = build_catalog(scenario, (timed, lead_ns), &opens_ns, &weights)?;
        let cumulative: Vec<f64> = weights
            .iter()
            .scan(0.0, |sum, weight| {
                *sum += weight;
                Some(*sum)
            })
            .collect();
        let mut presses = generate_presses(scenario, (timed, countdown_ns), &opens_ns, &cumulative);
        presses.sort_by_key(|press| press.at_ns);
        if let Some(cap) = scenario.intents {
            presses.truncate(cap as usize);
        }
        if let Some(rate) = scenario.rate {
            let spacing_ns = 1e9 / rate;
            for (index, press) in presses.iter_mut().enumerate() {
                press.at_ns = (index as f64 * spacing_ns) as u64;
            }
        }
        if presses.is_empty() {
            return Err("press_fraction: the scenario produced no presses".into());
        }
        let last_press_ns = presses.last().map_or(0, |press| press.at_ns);
        let offered = Offered::of(&presses);
        let total = presses.len() as u64;
        Ok(Self {
            catalog,
            schedules: split_by_buyer(presses, scenario.producers as usize),
            start_ns: lead_ns,
            opens_ns,
            last_press_ns,
            presses: total,
            offered,
        })
    }
}

/// The scenario's catalog: per seller and product a limit group (with the scenario's
/// policy) of its variants, stock split over them by `weights`, each product's window
/// opening at its wave (timed runs) or at once.
fn build_catalog(
    scenario: &Scenario,
    (timed, lead_ns): (bool, u64),
    opens_ns: &[u64],
    weights: &[f64],
) -> Result<Catalog, String> {
    let (products_per_seller, variants) =
        (scenario.products_per_seller, scenario.variants_per_product);
    let stock_split = split_stock(scenario.stock_per_product, weights);
    let mut builder = Catalog::builder();
    let mut skus = Vec::with_capacity(scenario.skus() as usize);
    let policy = scenario.engine_policy();
    let hold_ns = scenario
        .hold_ms
        .map(|ms| scaled_ns(scenario, ms as f64).max(1));
    let close_after_ns = scenario
        .closes_after_ms()
        .map(|ms| scaled_ns(scenario, ms as f64).max(1));
    for seller in 0..scenario.sellers {
        for product in 0..products_per_seller {
            let group_index = seller * products_per_seller + product;
            let group = GroupId(group_index + 1);
            builder =
                builder.group_spec(GroupSpec::new(group, scenario.limit_per_buyer).policy(policy));
            let opens_at_ns = if timed {
                lead_ns + opens_ns[product as usize]
            } else {
                0
            };
            let window = SaleWindow {
                opens_at_ns,
                closes_at_ns: close_after_ns.map_or(u64::MAX, |after| {
                    (if timed { opens_at_ns } else { lead_ns }) + after
                }),
            };
            for variant in 0..variants {
                let mut spec = SkuSpec::new(
                    SkuId(group_index * variants + variant + 1),
                    stock_split[variant as usize],
                )
                .limit(scenario.limit_per_buyer)
                .group(group)
                .window(window)
                .waitlist(scenario.waitlist)
                .labels(
                    format!("seller {seller} product {product}"),
                    format!("variant {variant}"),
                );
                if let Some(hold_ns) = hold_ns {
                    spec = spec.hold(hold_ns);
                }
                skus.push(spec);
            }
        }
    }
    builder
        .skus(skus)
        .build()
        .map_err(|error| format!("catalog: {error}"))
}

/// Every viewer's presses, unsorted: per seller a drawn audience, per product and viewer
/// a press with the scenario's probability (a variant by popularity, a quantity, a time in
/// the countdown or the burst), and sometimes a retry of it.
fn generate_presses(
    scenario: &Scenario,
    (timed, countdown_ns): (bool, u64),
    opens_ns: &[u64],
    cumulative: &[f64],
) -> Vec<Press> {
    let (products_per_seller, variants) =
        (scenario.products_per_seller, scenario.variants_per_product);
    let mut rng = Rng::new(scenario.seed);
    let burst_ns = scaled_ns(scenario, scenario.burst_ms as f64).max(1);
    let mut presses: Vec<Press> = Vec::new();
    for seller in 0..scenario.sellers {
        let viewers =
            scenario.viewers_min + rng.below(scenario.viewers_max - scenario.viewers_min + 1);
        for product in 0..products_per_seller {
            let group_index = seller * products_per_seller + product;
            let opens = opens_ns[product as usize];
            let mut viewer = viewers_passed_over(&mut rng, scenario.press_fraction);
            while viewer < viewers {
                let pick = rng.unit();
                let variant = cumulative
                    .iter()
                    .position(|&edge| pick < edge)
                    .unwrap_or(variants as usize - 1) as u32;
                let roll = rng.unit();
                let quantity = if roll < scenario.malformed_fraction {
                    0
                } else if roll < scenario.malformed_fraction + scenario.two_units_fraction {
                    2
                } else {
                    1
                };
                // 2% press during the countdown; the rest front-loaded into the burst.
                let at_ns = if timed && rng.unit() < 0.02 && countdown_ns > 0 {
                    opens.saturating_sub((rng.unit() * countdown_ns as f64) as u64)
                } else {
                    opens + (rng.unit().powi(2) * burst_ns as f64) as u64
                };
                let intent = Intent {
                    user: UserId((u64::from(seller) << 32) | viewer),
                    client_key: u64::from(product),
                    sku: SkuId(group_index * variants + variant + 1),
                    quantity,
                };
                presses.push(Press { at_ns, intent });
                if rng.unit() < scenario.retry_fraction {
                    let delay = scaled_ns(scenario, 100.0 + rng.unit() * 900.0);
                    presses.push(Press {
                        at_ns: at_ns + delay,
                        intent,
                    });
                }
                viewer = viewer
                    .saturating_add(1)
                    .saturating_add(viewers_passed_over(&mut rng, scenario.press_fraction));
            }
        }
    }
    presses
}

/// How many viewers in a row do not press before the next one does, where each presses
/// with probability `fraction` on its own: a geometric draw, so that generating a
/// scenario takes time in proportion to its presses rather than its viewers (a billion
/// viewers of whom almost none press is quick). `u64::MAX` where nobody presses.
fn viewers_passed_over(rng: &mut Rng, fraction: f64) -> u64 {
    if fraction >= 1.0 {
        return 0;
    }
    if fraction <= 0.0 {
        return u64::MAX;
    }
    // P(at least k pass over) = (1 - fraction)^k; ln_1p keeps a tiny fraction exact.
    let passed = ((-rng.unit()).ln_1p() / (-fraction).ln_1p()).floor();
    if passed < u64::MAX as f64 {
        passed as u64
    } else {
        u64::MAX
    }
}

/// The presses split over `producers` schedules, keeping their order. A buyer's presses
/// all go through one producer, as one buyer's requests would reach one connection.
fn split_by_buyer(presses: Vec<Press>, producers: usize) -> Vec<Vec<Press>> {
    let mut schedules: Vec<Vec<Press>> = (0..producers)
        .map(|_| Vec::with_capacity(presses.len() / producers + 1))
        .collect();
    for press in presses {
        let producer =
            (press.intent.user.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % producers;
        schedules[producer].push(press);
    }
    schedules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_split_keeps_the_total_and_every_variant() {
        for (stock, variants) in [(5_000, 12), (12, 12), (100, 7), (40, 1)] {
            let split = split_stock(stock, &zipf_weights(variants, 1.0));
            assert_eq!(split.iter().sum::<u32>(), stock);
            assert!(split.iter().all(|&units| units >= 1));
        }
    }

    #[test]
    fn viewers_press_in_the_scenario_s_fraction() {
        let mut scenario = Scenario::sneaker_drop();
        (scenario.viewers_min, scenario.viewers_max) = (1_000_000, 1_000_000);
        scenario.retry_fraction = 0.0;
        // Everyone presses once.
        scenario.press_fraction = 1.0;
        assert_eq!(Plan::new(&scenario).unwrap().presses, 1_000_000);
        // One in a hundred: 10,000 expected, 99.5 the standard deviation.
        scenario.press_fraction = 0.01;
        let presses = Plan::new(&scenario).unwrap().presses;
        assert!((9_500..=10_500).contains(&presses), "{presses}");
        // Every viewer presses at most once.
        let plan = Plan::new(&scenario).unwrap();
        let mut users: Vec<u64> = plan
            .schedules
            .iter()
            .flatten()
            .map(|press| press.intent.user.0)
            .collect();
        users.sort_unstable();
        users.dedup();
        assert_eq!(users.len() as u64, presses);
    }

    /// Found by fuzzing: 7,720 products of a million viewers each, none of whom press,
    /// took 38 s to find that out (a draw per viewer); the draws now go by presses.
    #[test]
    fn a_scenario_where_nobody_presses_is_refused_without_drawing_every_viewer() {
        let mut scenario = Scenario::sneaker_drop();
        (scenario.sellers, scenario.products_per_seller) = (8, 965);
        (scenario.viewers_min, scenario.viewers_max) = (1_000_000, 1_000_000);
        scenario.press_fraction = 0.0;
        let refused = Plan::new(&scenario).err().unwrap();
        assert!(refused.starts_with("press_fraction"), "{refused}");
        // A press or so per product of those million viewers.
        scenario.press_fraction = 1e-6;
        let presses = Plan::new(&scenario).unwrap().presses;
        assert!((7_000..=11_000).contains(&presses), "{presses}");
    }

    #[test]
    fn plan_is_deterministic_and_sized() {
        let mut scenario = Scenario::sneaker_drop();
        scenario.viewers_min = 10_000;
        scenario.viewers_max = 10_000;
        scenario.producers = 3;
        let first = Plan::new(&scenario).unwrap();
        let second = Plan::new(&scenario).unwrap();
        assert_eq!(first.presses, second.presses);
        assert!(first.presses >= 10_000 && first.presses < 12_000);
        assert_eq!(first.catalog.total_stock(), 5_000);
        for (a, b) in first.schedules.iter().zip(&second.schedules) {
            assert_eq!(a.len(), b.len());
            assert!(a.windows(2).all(|pair| pair[0].at_ns <= pair[1].at_ns));
            assert!(
                a.iter()
                    .zip(b)
                    .all(|(x, y)| x.at_ns == y.at_ns && x.intent == y.intent)
            );
        }
    }
}
