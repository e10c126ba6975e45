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

    /// Checks every knob; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |field: &str, value: u64| {
            if value == 0 {
                Err(format!("{field}: must be at least 1"))
            } else {
                Ok(())
            }
        };
        let fraction = |field: &str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(format!("{field}: must be between 0 and 1, got {value}"))
            }
        };
        positive("sellers", self.sellers.into())?;
        positive("products_per_seller", self.products_per_seller.into())?;
        positive("variants_per_product", self.variants_per_product.into())?;
        positive("limit_per_buyer", self.limit_per_buyer.into())?;
        positive("viewers_min", self.viewers_min)?;
        positive("producers", self.producers.into())?;
        positive("shards", self.shards.into())?;
        positive("ring_capacity", self.ring_capacity.into())?;
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
        if self.hold_ms == Some(0) {
            return Err("hold_ms: a payment window must be at least 1 ms".into());
        }
        if self.close_after_ms == Some(0) {
            return Err("close_after_ms: must be at least 1 ms".into());
        }
        if !(self.zipf_exponent.is_finite() && self.zipf_exponent >= 0.0) {
            return Err(format!(
                "zipf_exponent: must be a number >= 0, got {}",
                self.zipf_exponent
            ));
        }
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return Err(format!("speed: must be above 0, got {}", self.speed));
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(format!("rate: must be above 0 intents/s, got {rate}"));
        }
        if self.intents == Some(0) {
            return Err("intents: must be at least 1".into());
        }
        if self.skus() > u64::from(u32::MAX) {
            return Err(format!("sellers: {} SKUs in all is too many", self.skus()));
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
        let presses = u64::from(self.sellers) as f64
            * self.viewers_max as f64
            * u64::from(self.products_per_seller) as f64
            * self.press_fraction
            * (1.0 + self.retry_fraction);
        let presses = self.intents.map_or(presses, |cap| presses.min(cap as f64));
        if presses > 200_000_000.0 {
            return Err(format!(
                "viewers_max: about {presses:.0} presses would not fit in memory; \
                 lower viewers, press_fraction or set intents"
            ));
        }
        Ok(())
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
