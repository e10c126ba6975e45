//! Scenarios: what is on sale, who presses buy and when. Presets, TOML files and flags all
//! fill the same [`Scenario`], which [`Scenario::validate`] checks, naming the bad field.

use serde::{Deserialize, Serialize};

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Each press is sent at its scheduled moment; latency counts from that moment, so a
    /// stall shows in the tail (no coordinated omission).
    Open,
    /// Presses are sent as fast as the engine takes them; latency counts from the submit.
    Closed,
}

/// The shard workers' idle strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Wait {
    /// Busy-spin.
    Spin,
    /// Spin, then yield.
    Yield,
    /// Spin, yield, then park (the engine's default).
    Park,
}

impl From<Wait> for flashsale::WaitStrategy {
    fn from(wait: Wait) -> Self {
        match wait {
            Wait::Spin => Self::Spin,
            Wait::Yield => Self::Yield,
            Wait::Park => Self::Park,
        }
    }
}

/// How a product's scarce units are shared out (the engine's [`flashsale::Policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// Served in arrival order.
    FirstCome,
    /// Presses before the opening and within `draw_window_ms` after it are pooled, one
    /// ticket per buyer, and drawn with the scenario's seed.
    OpeningDraw,
    /// Pooled like a draw, then everyone gets a unit before anyone gets a second.
    OneEachFirst,
}

/// A live-stream sale to simulate. Times are scenario milliseconds; `speed` compresses them
/// into run time (a 5-minute show at speed 20 runs in 15 s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// A label for reports.
    pub name: String,
    /// Seeds every random choice: the same scenario and seed give the same presses.
    pub seed: u64,
    /// Sellers live at once, each with their own products and viewers.
    pub sellers: u32,
    /// Products each seller shows.
    pub products_per_seller: u32,
    /// Variants (SKUs) of each product, sharing one per-buyer limit group.
    pub variants_per_product: u32,
    /// Units of each product, spread over its variants by popularity.
    pub stock_per_product: u32,
    /// Most units one buyer may hold of one product, across its variants.
    pub limit_per_buyer: u32,
    /// Zipf exponent of variant popularity (0 = uniform).
    pub zipf_exponent: f64,
    /// Viewers of each seller (fewest).
    pub viewers_min: u64,
    /// Viewers of each seller (most); each seller draws a count in between.
    pub viewers_max: u64,
    /// Fraction of viewers who press buy when a product is shown.
    pub press_fraction: f64,
    /// Countdown before the first product's sale opens; some impatient presses land in it.
    pub countdown_ms: u64,
    /// Most presses for a product land within this long after its sale opens.
    pub burst_ms: u64,
    /// Time between one product being shown and the next (0: all at once).
    pub wave_interval_ms: u64,
    /// Fraction of pressing viewers who press again with the same key (a retry).
    pub retry_fraction: f64,
    /// Fraction of presses that are malformed (quantity 0).
    pub malformed_fraction: f64,
    /// Fraction of presses asking for 2 units rather than 1.
    pub two_units_fraction: f64,
    /// Constant offered rate (intents/s); when set, presses are evenly spaced at this rate
    /// instead of following the countdown-and-burst shape.
    pub rate: Option<f64>,
    /// Cap on the number of presses (the first ones by schedule).
    pub intents: Option<u64>,
    /// Scenario time runs this many times faster than wall time.
    pub speed: f64,
    /// Request threads submitting presses.
    pub producers: u32,
    /// Shard threads.
    pub shards: u32,
    /// Ring slots per producer and shard.
    pub ring_capacity: u32,
    /// Orders each shard makes room for at start-up (none: the engine's default, the
    /// shard's stock up to 4,194,304). A shard that confirms more grows its order book
    /// mid-sale, a pause of its decisions (see the report's note).
    pub order_capacity: Option<u64>,
    /// Idle strategy of the shards.
    pub wait: Wait,
    /// Open or closed loop.
    pub mode: Mode,
    /// Allocation policy of every product.
    pub policy: PolicyKind,
    /// Pooled policies: how long after a product's opening its pool stays open.
    pub draw_window_ms: u64,
    /// Fraction of confirmed orders paid `pay_delay_ms` after confirmation.
    pub pay_rate: f64,
    /// Fraction of confirmed orders cancelled `pay_delay_ms` after confirmation. The rest
    /// try to pay `pay_delay_ms` after their hold expired (refused: the hold expired), or
    /// simply pay late if there is no hold.
    pub cancel_rate: f64,
    /// Delay between an order's confirmation and its payment or cancellation.
    pub pay_delay_ms: u64,
    /// Payment window: an unpaid order's units go back on sale this long after it was
    /// confirmed (none: they stay held).
    pub hold_ms: Option<u64>,
    /// Waitlist places per SKU; above 0, every press asks to wait rather than be rejected
    /// as sold out.
    pub waitlist: u32,
    /// The sale closes this long after each product's opening; everyone still waiting is
    /// then answered. Default with a waitlist: the burst, plus the hold and the payment
    /// delay, plus 1 s; without one, never.
    pub close_after_ms: Option<u64>,
    /// Closed loop: one press in this many is timed, from its submit to its outcome (1:
    /// every press). Two clock reads and a histogram record cost more than the engine's
    /// decision on its fastest paths, so a throughput measurement samples (`compare` times
    /// one in 64). The open loop times every press, from its intended send time.
    pub latency_sample: u32,
}

impl Default for Scenario {
    fn default() -> Self {
        Self::sneaker_drop()
    }
}

/// The presets `--scenario` accepts.
pub const PRESETS: [&str; 4] = ["sneaker-drop", "lipstick-live", "micro-shows", "steady"];

impl Scenario {
    /// 1.5M viewers, one trainer in 12 variants (6 sizes x 2 colours), 5,000 pairs, limit 2
    /// across variants; a 1 s countdown, then most presses within 3 s.
    pub fn sneaker_drop() -> Self {
        Self {
            name: "sneaker-drop".into(),
            seed: 42,
            sellers: 1,
            products_per_seller: 1,
            variants_per_product: 12,
            stock_per_product: 5_000,
            limit_per_buyer: 2,
            zipf_exponent: 1.0,
            viewers_min: 1_500_000,
            viewers_max: 1_500_000,
            press_fraction: 1.0,
            countdown_ms: 1_000,
            burst_ms: 3_000,
            wave_interval_ms: 0,
            retry_fraction: 0.1,
            malformed_fraction: 0.002,
            two_units_fraction: 0.1,
            rate: None,
            intents: None,
            speed: 1.0,
            producers: 1,
            shards: 1,
            ring_capacity: 1024,
            order_capacity: None,
            wait: Wait::Park,
            mode: Mode::Open,
            policy: PolicyKind::FirstCome,
            draw_window_ms: 500,
            pay_rate: 0.0,
            cancel_rate: 0.0,
            pay_delay_ms: 0,
            hold_ms: None,
            waitlist: 0,
            close_after_ms: None,
            latency_sample: 1,
        }
    }

    /// A host selling 15,000 lipsticks over 5 minutes: 10 shades shown one after another,
    /// 30 s apart, 1,500 each, 200,000 viewers of whom 40% press for each shade; run at
    /// speed 20 (15 s).
    pub fn lipstick_live() -> Self {
        Self {
            name: "lipstick-live".into(),
            products_per_seller: 10,
            variants_per_product: 1,
            stock_per_product: 1_500,
            limit_per_buyer: 3,
            viewers_min: 200_000,
            viewers_max: 200_000,
            press_fraction: 0.4,
            countdown_ms: 2_000,
            burst_ms: 10_000,
            wave_interval_ms: 30_000,
            speed: 20.0,
            shards: 2,
            ..Self::sneaker_drop()
        }
    }

    /// 2,000 small sellers live at once, each with 10,000-20,000 followers and 3 products
    /// of 40 units; 5% of followers press. Load spreads over 6,000 SKUs and every shard.
    pub fn micro_shows() -> Self {
        Self {
            name: "micro-shows".into(),
            sellers: 2_000,
            products_per_seller: 3,
            variants_per_product: 1,
            stock_per_product: 40,
            limit_per_buyer: 1,
            viewers_min: 10_000,
            viewers_max: 20_000,
            press_fraction: 0.05,
            countdown_ms: 500,
            burst_ms: 5_000,
            shards: 2,
            ..Self::sneaker_drop()
        }
    }

    /// A constant 1M intents/s for 2 s (20,000 viewers pressing for each of 100 products
    /// that do not sell out), for latency curves (use `--rates` to sweep).
    pub fn steady() -> Self {
        Self {
            name: "steady".into(),
            products_per_seller: 100,
            variants_per_product: 1,
            stock_per_product: 40_000,
            limit_per_buyer: 2,
            viewers_min: 20_000,
            viewers_max: 20_000,
            press_fraction: 1.0,
            countdown_ms: 0,
            retry_fraction: 0.0,
            malformed_fraction: 0.0,
            rate: Some(1_000_000.0),
            intents: Some(2_000_000),
            ..Self::sneaker_drop()
        }
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "sneaker-drop" => Some(Self::sneaker_drop()),
            "lipstick-live" => Some(Self::lipstick_live()),
            "micro-shows" => Some(Self::micro_shows()),
            "steady" => Some(Self::steady()),
            _ => None,
        }
    }

    /// Reads a scenario from TOML; missing fields take the sneaker-drop values.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|error| {
            // toml's message is multi-line with a source excerpt; keep its first line and
            // the field it names.
            let message = error.message().replace('\n', " ");
            match error.span() {
                Some(span) => format!("{message} (at byte {})", span.start),
                None => message,
            }
        })
    }

    /// Whether orders are paid, cancelled or expire during the run.
    pub fn has_lifecycle(&self) -> bool {
        self.pay_rate > 0.0 || self.cancel_rate > 0.0 || self.hold_ms.is_some()
    }

    /// When each product's sale closes, scenario ms after its opening, if it does.
    pub fn closes_after_ms(&self) -> Option<u64> {
        self.close_after_ms.or_else(|| {
            (self.waitlist > 0)
                .then(|| self.burst_ms + self.hold_ms.unwrap_or(0) + self.pay_delay_ms + 1_000)
        })
    }

    /// The engine policy for this scenario.
    pub fn engine_policy(&self) -> flashsale::Policy {
        let window_ns = (self.draw_window_ms as f64 * 1e6 / self.speed) as u64;
        match self.policy {
            PolicyKind::FirstCome => flashsale::Policy::FirstCome,
            PolicyKind::OpeningDraw => flashsale::Policy::OpeningDraw {
                window_ns,
                seed: self.seed,
            },
            PolicyKind::OneEachFirst => flashsale::Policy::OneEachFirst { window_ns },
        }
    }

    /// The total number of SKUs.
    pub fn skus(&self) -> u64 {
        u64::from(self.sellers)
            * u64::from(self.products_per_seller)
            * u64::from(self.variants_per_product)
    }

    /// Checks every knob against its range, then estimates the run's memory and wall
    /// time, all before anything is allocated or slept; the error is one line that starts
    /// with the knob to change.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_counts()?;
        self.validate_times()?;
        self.validate_rates()?;
        self.validate_shape()?;
        self.check_estimates()
    }

    /// Every count within its range.
    fn validate_counts(&self) -> Result<(), String> {
        within("sellers", self.sellers.into(), 1, SELLERS_MAX)?;
        within(
            "products_per_seller",
            self.products_per_seller.into(),
            1,
            PRODUCTS_PER_SELLER_MAX,
        )?;
        within(
            "variants_per_product",
            self.variants_per_product.into(),
            1,
            VARIANTS_MAX,
        )?;
        within(
            "limit_per_buyer",
            self.limit_per_buyer.into(),
            1,
            u32::MAX.into(),
        )?;
        within("viewers_max", self.viewers_max, 1, VIEWERS_MAX)?;
        within("viewers_min", self.viewers_min, 1, VIEWERS_MAX)?;
        within("producers", self.producers.into(), 1, PRODUCERS_MAX)?;
        within("shards", self.shards.into(), 1, SHARDS_MAX)?;
        within(
            "ring_capacity",
            self.ring_capacity.into(),
            1,
            flashsale::EngineBuilder::RING_CAPACITY_MAX as u64,
        )?;
        if let Some(orders) = self.order_capacity {
            within(
                "order_capacity",
                orders,
                0,
                flashsale::EngineBuilder::ORDER_CAPACITY_MAX as u64,
            )?;
        }
        within("waitlist", self.waitlist.into(), 0, WAITLIST_MAX)?;
        within(
            "latency_sample",
            self.latency_sample.into(),
            1,
            LATENCY_SAMPLE_MAX.into(),
        )?;
        Ok(())
    }

    /// Every duration within its range, and the intents cap.
    fn validate_times(&self) -> Result<(), String> {
        for (field, ms) in [
            ("countdown_ms", Some(self.countdown_ms)),
            ("burst_ms", Some(self.burst_ms)),
            ("wave_interval_ms", Some(self.wave_interval_ms)),
            ("draw_window_ms", Some(self.draw_window_ms)),
            ("pay_delay_ms", Some(self.pay_delay_ms)),
            ("hold_ms", self.hold_ms),
            ("close_after_ms", self.close_after_ms),
        ] {
            if let Some(ms) = ms {
                let min = u64::from(matches!(field, "hold_ms" | "close_after_ms"));
                within(field, ms, min, SCENARIO_MS_MAX)?;
            }
        }
        if let Some(intents) = self.intents {
            within("intents", intents, 1, PRESSES_MAX)?;
        }
        Ok(())
    }

    /// Fractions between 0 and 1, and the exponent, speed and rate finite and positive.
    fn validate_rates(&self) -> Result<(), String> {
        fraction("press_fraction", self.press_fraction)?;
        fraction("retry_fraction", self.retry_fraction)?;
        fraction("malformed_fraction", self.malformed_fraction)?;
        fraction("two_units_fraction", self.two_units_fraction)?;
        fraction("pay_rate", self.pay_rate)?;
        fraction("cancel_rate", self.cancel_rate)?;
        if self.pay_rate + self.cancel_rate > 1.0 {
            return Err(format!(
                "cancel_rate: pay_rate {} plus cancel_rate {} is above 1",
                self.pay_rate, self.cancel_rate
            ));
        }
        if !(self.zipf_exponent.is_finite() && (0.0..=ZIPF_MAX).contains(&self.zipf_exponent)) {
            return Err(format!(
                "zipf_exponent: must be a number from 0 to {ZIPF_MAX}, got {}",
                self.zipf_exponent
            ));
        }
        if !(self.speed.is_finite() && self.speed > 0.0 && self.speed <= SPEED_MAX) {
            return Err(format!(
                "speed: must be above 0 and at most {SPEED_MAX} (a scenario millisecond to a \
                 nanosecond of the run), got {}",
                self.speed
            ));
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0 && rate <= RATE_MAX)
        {
            return Err(format!(
                "rate: must be above 0 and at most {RATE_MAX} intents/s (a press a \
                 nanosecond), got {rate}"
            ));
        }
        Ok(())
    }

    /// What the knobs mean together: audiences, stock per variant, SKUs, shards.
    fn validate_shape(&self) -> Result<(), String> {
        if self.viewers_max < self.viewers_min {
            return Err(format!(
                "viewers_max: {} is below viewers_min {}",
                self.viewers_max, self.viewers_min
            ));
        }
        if self.stock_per_product < self.variants_per_product {
            return Err(format!(
                "stock_per_product: {} cannot give each of {} variants a unit",
                self.stock_per_product, self.variants_per_product
            ));
        }
        if self.skus() > SKUS_MAX {
            return Err(format!(
                "sellers: {} SKUs in all (sellers x products_per_seller x variants_per_product) \
                 is above {SKUS_MAX}",
                self.skus()
            ));
        }
        // Limit groups (one per product) are the unit of placement.
        let products = u64::from(self.sellers) * u64::from(self.products_per_seller);
        if u64::from(self.shards) > products {
            return Err(format!(
                "shards: {} shards but only {products} products (a product's variants share \
                 one shard)",
                self.shards
            ));
        }
        Ok(())
    }

    /// Presses the plan generates before the `intents` cap applies (it keeps the first
    /// ones by schedule, so it makes them all), at most.
    pub fn presses_generated(&self) -> f64 {
        u64::from(self.sellers) as f64
            * self.viewers_max as f64
            * u64::from(self.products_per_seller) as f64
            * self.press_fraction
            * (1.0 + self.retry_fraction)
    }

    /// The presses sent, at most.
    pub fn presses_sent(&self) -> f64 {
        let generated = self.presses_generated();
        self.intents
            .map_or(generated, |cap| generated.min(cap as f64))
    }

    /// Scenario time from the start to the last thing that can happen (the last press,
    /// retry, payment, expiry, draw or closing), in ms.
    pub fn span_ms(&self) -> f64 {
        let last_opening = self.countdown_ms as f64
            + f64::from(self.products_per_seller.saturating_sub(1)) * self.wave_interval_ms as f64;
        let after_opening = [
            self.pay_delay_ms as f64 + self.hold_ms.unwrap_or(0) as f64,
            self.closes_after_ms().unwrap_or(0) as f64,
            if self.policy == PolicyKind::FirstCome {
                0.0
            } else {
                self.draw_window_ms as f64
            },
        ]
        .into_iter()
        .fold(0.0, f64::max);
        match (self.mode, self.rate) {
            // As fast as the engine takes them: only the timers take scenario time.
            (Mode::Closed, _) => after_opening,
            // Evenly spaced at the rate (in wall time), every sale open from the start.
            (Mode::Open, Some(rate)) => {
                self.presses_sent() / rate * 1e3 * self.speed + after_opening
            }
            (Mode::Open, None) => {
                last_opening + (self.burst_ms as f64 + RETRY_DELAY_MS_MAX).max(after_opening)
            }
        }
    }

    /// The wall-clock seconds a run takes at most (closed loop: its timers only).
    pub fn wall_seconds(&self) -> f64 {
        self.span_ms() / self.speed / 1e3
    }

    /// Bytes the run holds at most, by the knob that drives each part: the presses (made,
    /// then split into schedules), the rings (one each way per producer and shard), the
    /// catalog and order books, and each producer's per-10 ms rate buckets.
    pub fn memory_bytes(&self) -> [(&'static str, f64); 6] {
        // The press list grows by doubling (up to twice its length), then is split into
        // schedules; plus the process itself (threads, allocator, histograms).
        let presses = self.presses_generated() * PRESS_BYTES * 3.0 + PROCESS_BYTES;
        let rings = f64::from(self.producers)
            * f64::from(self.shards)
            * f64::from(self.ring_capacity.next_power_of_two())
            * RING_SLOT_BYTES;
        let skus = self.skus() as f64 * SKU_BYTES;
        let stock = (u64::from(self.sellers) * u64::from(self.products_per_seller)) as f64
            * f64::from(self.stock_per_product);
        let orders = stock.min(self.presses_sent()) * ORDER_BYTES;
        let buckets = f64::from(self.producers) * self.wall_seconds() * 100.0 * BUCKET_BYTES;
        // Room made up front beyond the orders' own (which `orders` counts).
        let room = self.order_capacity.map_or(0.0, |room| {
            (room as f64 * f64::from(self.shards) * ROOM_BYTES - orders).max(0.0)
        });
        [
            ("viewers_max", presses),
            ("ring_capacity", rings),
            ("variants_per_product", skus),
            ("stock_per_product", orders),
            ("speed", buckets),
            ("order_capacity", room),
        ]
    }

    /// Refuses a run that would not fit in memory or would take too long, naming the knob
    /// that makes it so.
    fn check_estimates(&self) -> Result<(), String> {
        let generated = self.presses_generated();
        if generated > PRESSES_MAX as f64 {
            return Err(format!(
                "viewers_max: about {generated:.3e} presses would be generated (the intents cap \
                 keeps the first ones by schedule, so all are made); at most {PRESSES_MAX}: \
                 lower viewers, products or press_fraction"
            ));
        }
        let wall = self.wall_seconds();
        if wall.is_nan() || wall > WALL_SECONDS_MAX {
            return Err(format!(
                "{}: the run would last about {} s of wall time (scenario {} s at speed {}); \
                 at most {WALL_SECONDS_MAX} s",
                self.slowest_knob(),
                short(wall),
                short(self.span_ms() / 1e3),
                short(self.speed)
            ));
        }
        let budget = memory_budget_bytes();
        let parts = self.memory_bytes();
        let memory: f64 = parts.iter().map(|(_, bytes)| bytes).sum();
        if memory.is_nan() || memory > budget {
            let (field, largest) = parts
                .into_iter()
                .fold(("viewers_max", 0.0), |a, b| if b.1 > a.1 { b } else { a });
            return Err(format!(
                "{field}: the run would need about {} of memory ({} of it for this knob's \
                 part); at most {} (half of this machine's) is used",
                gib(memory),
                gib(largest),
                gib(budget)
            ));
        }
        Ok(())
    }

    /// The knob that makes the run longest: the rate, the speed (when the scenario itself
    /// would fit at speed 1), or the longest of the time knobs.
    fn slowest_knob(&self) -> &'static str {
        if let Some(rate) = self.rate
            && self.presses_sent() / rate > WALL_SECONDS_MAX
        {
            return "rate";
        }
        if self.span_ms() / 1e3 / self.speed.max(1.0) <= WALL_SECONDS_MAX {
            return "speed";
        }
        let waves =
            f64::from(self.products_per_seller.saturating_sub(1)) * self.wave_interval_ms as f64;
        [
            ("countdown_ms", self.countdown_ms as f64),
            ("burst_ms", self.burst_ms as f64),
            ("wave_interval_ms", waves),
            ("draw_window_ms", self.draw_window_ms as f64),
            ("pay_delay_ms", self.pay_delay_ms as f64),
            ("hold_ms", self.hold_ms.unwrap_or(0) as f64),
            ("close_after_ms", self.close_after_ms.unwrap_or(0) as f64),
        ]
        .into_iter()
        .fold(("speed", 0.0), |longest, knob| {
            if knob.1 > longest.1 { knob } else { longest }
        })
        .0
    }
}

/// `value` within `min..=max`, or an error naming `field`.
fn within(field: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{field}: must be {min}..={max}, got {value}"))
    }
}

/// `value` between 0 and 1, or an error naming `field`.
fn fraction(field: &str, value: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(format!("{field}: must be between 0 and 1, got {value}"))
    }
}

/// Most sellers, products per seller, variants per product and SKUs in all.
pub const SELLERS_MAX: u64 = 100_000;
/// See [`SELLERS_MAX`].
pub const PRODUCTS_PER_SELLER_MAX: u64 = 10_000;
/// See [`SELLERS_MAX`].
pub const VARIANTS_MAX: u64 = 1_000;
/// See [`SELLERS_MAX`].
pub const SKUS_MAX: u64 = 1_000_000;
/// Most viewers per seller.
pub const VIEWERS_MAX: u64 = 1_000_000_000;
/// Most presses a run generates (and so the most `intents`).
pub const PRESSES_MAX: u64 = 200_000_000;
/// Most request threads and shard threads.
pub const PRODUCERS_MAX: u64 = 256;
/// See [`PRODUCERS_MAX`].
pub const SHARDS_MAX: u64 = 256;
/// Most waitlist places per SKU.
pub const WAITLIST_MAX: u64 = 10_000_000;
/// Fewest presses timed: one in this many.
pub const LATENCY_SAMPLE_MAX: u32 = 1 << 20;
/// Longest scenario time knob: a week.
pub const SCENARIO_MS_MAX: u64 = 7 * 24 * 3_600 * 1_000;
/// Longest run, in wall seconds (estimated before it starts).
pub const WALL_SECONDS_MAX: f64 = 3_600.0;
/// Fastest scenario time: a scenario millisecond to a nanosecond of the run, the
/// schedule's resolution (faster, presses due apart would be sent as one).
pub const SPEED_MAX: f64 = 1e6;
/// Highest constant offered rate: one press a nanosecond, the schedule's resolution.
pub const RATE_MAX: f64 = 1e9;
/// Steepest variant popularity.
pub const ZIPF_MAX: f64 = 10.0;
/// A retry comes up to this long after its press.
const RETRY_DELAY_MS_MAX: f64 = 1_000.0;
/// Estimated bytes per press, per ring slot (a request one way, a completion back), per
/// SKU (catalog, core, report), per order (book, log, producer's list) and per rate bucket.
const PRESS_BYTES: f64 = 40.0;
const RING_SLOT_BYTES: f64 = 112.0;
const SKU_BYTES: f64 = 600.0;
const ORDER_BYTES: f64 = 250.0;
/// Per order of room a shard makes up front: the order book's slots (64 bytes an order at
/// most half full, twice that where the slots round up to a power of two) and a record.
const ROOM_BYTES: f64 = 152.0;
const BUCKET_BYTES: f64 = 16.0;
const PROCESS_BYTES: f64 = 64.0 * 1024.0 * 1024.0;

/// Half of this machine's physical memory (8 GiB where it cannot be read).
fn memory_budget_bytes() -> f64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        });
    total_kib.map_or(8.0 * f64::from(1u32 << 30), |kib| kib * 1024.0 / 2.0)
}

/// A number for a one-line message: plain when moderate, in e-notation when not.
fn short(x: f64) -> String {
    if x == 0.0 || (1e-3..1e7).contains(&x.abs()) {
        let text = format!("{x:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{x:.2e}")
    }
}

fn gib(bytes: f64) -> String {
    let gib = bytes / f64::from(1u32 << 30);
    if gib < 1e6 {
        format!("{gib:.1} GiB")
    } else {
        format!("{gib:.1e} GiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for name in PRESETS {
            Scenario::preset(name).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn toml_fills_missing_fields_and_names_bad_ones() {
        let scenario =
            Scenario::from_toml("name = \"x\"\nshards = 1\nstock_per_product = 50\n").unwrap();
        assert_eq!(scenario.stock_per_product, 50);
        assert_eq!(scenario.variants_per_product, 12);
        let error = Scenario::from_toml("stok_per_product = 5").unwrap_err();
        assert!(error.contains("stok_per_product"), "{error}");
        let error = Scenario::from_toml("shards = \"two\"").unwrap_err();
        assert!(error.contains("invalid type"), "{error}");
    }

    #[test]
    fn impossible_knobs_name_their_field() {
        let check = |change: fn(&mut Scenario), field: &str| {
            let mut scenario = Scenario::sneaker_drop();
            change(&mut scenario);
            let error = scenario.validate().unwrap_err();
            assert!(error.starts_with(field), "{error}");
        };
        check(|s| s.producers = 0, "producers");
        check(|s| s.shards = 2, "shards");
        check(|s| s.rate = Some(0.0), "rate");
        check(|s| s.press_fraction = 1.5, "press_fraction");
        check(|s| s.viewers_max = 1, "viewers_max");
        check(|s| s.speed = 0.0, "speed");
        check(|s| s.speed = 1e300, "speed");
        check(|s| s.rate = Some(2e9), "rate");
        check(|s| s.pay_rate = 1.2, "pay_rate");
        check(
            |s| {
                s.pay_rate = 0.7;
                s.cancel_rate = 0.5;
            },
            "cancel_rate",
        );
        check(|s| s.hold_ms = Some(0), "hold_ms");
    }
}
