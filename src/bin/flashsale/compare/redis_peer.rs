//! The Redis + Lua peer (feature `redis-peer`), and what `--redis` says without it.

#[cfg(not(feature = "redis-peer"))]
pub use absent::{check, run};
#[cfg(feature = "redis-peer")]
pub use real::{check, run};

#[cfg(feature = "redis-peer")]
mod real {
    //! The Redis + Lua peer.

    use super::super::*;

    /// A buyer's state for a product (its idempotency keys, its units of each SKU, its
    /// units of the product) is one hash, `KEYS[1]`; the SKU's stock is `KEYS[2]`. Check
    /// the key, then the buyer's units of the SKU and of the product (one `HMGET`), then the
    /// stock (`GET`); confirm with one `HSET` and one `SET`. The order's id is the SKU's
    /// number (`ARGV[5]`) above the units it had sold once this order took its own
    /// (`ARGV[4]`: its starting stock), which only grows, so no counter key is needed.
    /// Replies `{code, order}`: 0 confirmed, 1 duplicate, 2 over the limit, 3 sold out,
    /// 4 insufficient stock.
    ///
    /// The leanest of the variants measured (`docs/simulator.md`): the first script kept
    /// five string keys and took six calls to confirm; a confirmation that creates one key
    /// instead of three is what saves the server's time.
    const SCRIPT: &str = r#"
local buyer = redis.call('HMGET', KEYS[1], ARGV[6], ARGV[7], 'product')
if buyer[1] then return {1, tonumber(buyer[1])} end
local quantity = tonumber(ARGV[1])
local units = tonumber(buyer[2] or '0') + quantity
if units > tonumber(ARGV[2]) then return {2, 0} end
local group_limit = tonumber(ARGV[3])
local product_units = tonumber(buyer[3] or '0') + quantity
if group_limit > 0 and product_units > group_limit then return {2, 0} end
local stock = tonumber(redis.call('GET', KEYS[2]) or '0')
if stock == 0 then return {3, 0} end
if stock < quantity then return {4, 0} end
local left = stock - quantity
local order = string.format('%.0f', tonumber(ARGV[5]) * 4294967296 + tonumber(ARGV[4]) - left)
redis.call('HSET', KEYS[1], ARGV[6], order, ARGV[7], units, 'product', product_units)
redis.call('SET', KEYS[2], left)
return {0, tonumber(order)}
"#;

    fn connect(address: &str) -> Result<redis::Connection, String> {
        let client = redis::Client::open(format!("redis://{address}/"))
            .map_err(|error| format!("redis: {address}: {error}"))?;
        client
            .get_connection_with_timeout(Duration::from_secs(5))
            .map_err(|error| format!("redis: {address}: {error}"))
    }

    fn failed(error: redis::RedisError) -> String {
        format!("redis: {error}")
    }

    /// The server's version, after resetting its statistics and loading the script;
    /// returns the version and the script's SHA.
    fn prepare(setup: &mut redis::Connection) -> Result<(String, String), String> {
        let version: String = redis::cmd("INFO")
            .arg("server")
            .query::<String>(setup)
            .map_err(failed)?
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query::<()>(setup)
            .map_err(failed)?;
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query(setup)
            .map_err(failed)?;
        Ok((version, sha))
    }

    /// What one connection's thread needs to build its script calls.
    struct Calls<'a> {
        sha: &'a str,
        prefix: &'a str,
        max_quantity: u32,
    }

    impl Calls<'_> {
        /// Adds the script call for `intent` to `pipe`.
        fn push(&self, pipe: &mut redis::Pipeline, catalog: &Catalog, intent: &Intent) {
            let prefix = self.prefix;
            let sku = &catalog.skus()[catalog.index_of(intent.sku).expect("validated")];
            // Keys are scoped to a product, as the engine's are.
            let product = sku.group.map_or(format!("sku{}", intent.sku.0), |group| {
                format!("g{}", group.0)
            });
            let group_limit = sku
                .group
                .and_then(|group| catalog.group(group))
                .map_or(0, |group| group.limit_per_buyer);
            let user = intent.user.0;
            pipe.cmd("EVALSHA")
                .arg(self.sha)
                .arg(2)
                .arg(format!("{prefix}:buyer:{user}:{product}"))
                .arg(format!("{prefix}:stock:{}", intent.sku.0))
                .arg(intent.quantity)
                .arg(sku.limit_per_buyer)
                .arg(group_limit)
                .arg(sku.stock)
                .arg(intent.sku.0)
                .arg(format!("key{}", intent.client_key))
                .arg(format!("sku{}", intent.sku.0));
        }

        /// One connection's buyers: their presses in pipelines of `pipeline` script calls.
        fn drive(
            &self,
            connection: &mut redis::Connection,
            schedule: &[Press],
            catalog: &Catalog,
            (clock, pipeline): (&EngineClock, usize),
            tally: &mut ProducerTally,
        ) -> Result<(), String> {
            let mut batch: Vec<Intent> = Vec::with_capacity(pipeline);
            for chunk in schedule.chunks(pipeline) {
                let sent = clock.now_ns();
                let mut pipe = redis::pipe();
                batch.clear();
                for press in chunk {
                    tally.submitted += 1;
                    let intent = press.intent;
                    if let Some(outcome) = validate(&intent, catalog, self.max_quantity) {
                        run::record(tally, catalog, 0, intent, outcome, sent, sent);
                        continue;
                    }
                    self.push(&mut pipe, catalog, &intent);
                    batch.push(intent);
                }
                if batch.is_empty() {
                    continue;
                }
                let replies: Vec<(i64, i64)> = pipe.query(connection).map_err(failed)?;
                let now = clock.now_ns();
                for (intent, (code, order)) in batch.iter().zip(replies) {
                    run::record(
                        tally,
                        catalog,
                        0,
                        *intent,
                        outcome(intent, code, order),
                        sent,
                        now,
                    );
                }
            }
            Ok(())
        }
    }

    /// The script's reply `{code, order}` as an outcome.
    fn outcome(intent: &Intent, code: i64, order: i64) -> Outcome {
        let rejected = |reason| Outcome::Rejected {
            reason,
            sequence: None,
        };
        match code {
            0 => Outcome::Confirmed(flashsale::Order {
                id: flashsale::OrderId(order as u64),
                user: intent.user,
                sku: intent.sku,
                quantity: intent.quantity,
                sequence: 0,
            }),
            1 => rejected(RejectReason::Duplicate(flashsale::OrderId(order as u64))),
            2 => rejected(RejectReason::UserLimit),
            3 => rejected(RejectReason::SoldOut),
            _ => rejected(RejectReason::InsufficientStock),
        }
    }

    /// The stock left per SKU, read back from the server, as levels.
    fn levels_left(
        setup: &mut redis::Connection,
        catalog: &Catalog,
        prefix: &str,
    ) -> Result<Vec<SkuLevels>, String> {
        let mut read_back = redis::pipe();
        for sku in catalog.skus() {
            read_back
                .cmd("GET")
                .arg(format!("{prefix}:stock:{}", sku.id.0));
        }
        let left: Vec<i64> = read_back.query(setup).map_err(failed)?;
        Ok(catalog
            .skus()
            .iter()
            .zip(left)
            .map(|(sku, left)| {
                // A negative count would be an oversell; it fails the check as a level
                // that does not add up.
                let available = u32::try_from(left).unwrap_or(u32::MAX);
                SkuLevels {
                    id: sku.id,
                    stock: sku.stock,
                    available,
                    held: sku.stock.saturating_sub(available),
                    sold: 0,
                    expired: 0,
                    cancelled: 0,
                    restocked: 0,
                    reduced: 0,
                    waiting: 0,
                    waitlist_filled: 0,
                }
            })
            .collect())
    }

    /// The server's own time per script call (to tell a slow client from a slow server),
    /// as a phrase for the label, or nothing if it does not say.
    fn server_time_per_call(setup: &mut redis::Connection) -> Result<String, String> {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(setup)
            .map_err(failed)?;
        Ok(stats
            .lines()
            .find(|line| line.starts_with("cmdstat_evalsha:"))
            .and_then(|line| line.split("usec_per_call=").nth(1))
            .and_then(|rest| rest.split(',').next())
            .map_or(String::new(), |usec| format!(", server {usec} µs/call")))
    }

    /// Whether the server at `address` answers, checked before any peer runs, so that a
    /// wrong address is refused before the in-process rows rather than after them.
    pub fn check(address: &str) -> Result<(), String> {
        let mut connection = connect(address)?;
        redis::cmd("PING")
            .query::<String>(&mut connection)
            .map_err(failed)?;
        Ok(())
    }

    pub fn run(
        scenario: &Scenario,
        address: &str,
        connections: u32,
        pipeline: u32,
    ) -> Result<PeerJson, String> {
        let mut scenario = scenario.clone();
        // One client thread per connection; the plan splits buyers over them.
        scenario.producers = connections;
        let plan = Plan::new(&scenario)?;
        let mut setup = connect(address)?;
        let (version, sha) = prepare(&mut setup)?;
        // A fresh namespace per run, so runs never see each other's keys.
        let prefix = format!(
            "flashsale:{}:{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos())
        );
        let mut stock_setup = redis::pipe();
        for sku in plan.catalog.skus() {
            stock_setup
                .cmd("SET")
                .arg(format!("{prefix}:stock:{}", sku.id.0))
                .arg(sku.stock)
                .ignore();
        }
        stock_setup.query::<()>(&mut setup).map_err(failed)?;
        let clock = EngineClock::start();
        let calls = Calls {
            sha: &sha,
            prefix: &prefix,
            max_quantity: max_quantity(&scenario),
        };
        let errors = Mutex::new(Vec::new());
        let ran = on_threads(plan, |_, schedule, catalog, mut tally| {
            let driven = connect(address).and_then(|mut connection| {
                let timing = (&clock, pipeline as usize);
                calls.drive(&mut connection, schedule, catalog, timing, &mut tally)
            });
            if let Err(error) = driven {
                errors.lock().expect("no panics while held").push(error);
            }
            tally
        })?;
        if let Some(error) = errors.into_inner().expect("no panics while held").pop() {
            return Err(error);
        }
        let levels = levels_left(&mut setup, &ran.2.catalog, &prefix)?;
        let decided = ran.0.outcomes;
        let per_call = server_time_per_call(&mut setup)?;
        Ok(finish(
            "redis",
            format!("Redis {version} + Lua ({connections} conns, pipeline {pipeline}{per_call})"),
            format!("{connections} client threads"),
            &scenario,
            ran,
            &levels,
            decided,
        ))
    }
}

#[cfg(not(feature = "redis-peer"))]
mod absent {
    //! Without the `redis-peer` feature, `--redis` explains how to get it.

    use super::super::*;

    const ABSENT: &str = "redis: this build has no Redis peer; build with `--features \
                          redis-peer` (benches/peers/redis.sh does)";

    pub fn check(_: &str) -> Result<(), String> {
        Err(ABSENT.into())
    }

    pub fn run(_: &Scenario, _: &str, _: u32, _: u32) -> Result<PeerJson, String> {
        Err(ABSENT.into())
    }
}
