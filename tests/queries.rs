//! What a service asks the engine without changing anything, and what it is told: an
//! order's state ([`Control::order`](flashsale::Control::order)), live levels (a page at a
//! time too), every order
//! event through the sink (the same events a replay of the journal records), and the
//! journal directory's manifest refusing another catalog or shard count.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

mod common;

use common::intent;
use flashsale::{
    Catalog, ControlError, Engine, EngineError, JournalConfig, ManualClock, Order, OrderEvent,
    OrderEventKind, OrderSink, OrderStatus, Outcome, ShardCore, ShardId, SkuId, SkuSpec,
};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flashsale-q-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn confirmed(outcome: Outcome) -> Order {
    *outcome
        .order()
        .unwrap_or_else(|| panic!("expected an order, got {outcome:?}"))
}

const HOLD_NS: u64 = 1_000_000;

fn held_catalog(stock: u32) -> Catalog {
    Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), stock).limit(4).hold(HOLD_NS))
        .sku(SkuSpec::new(SkuId(2), 3).limit(4))
        .build()
        .unwrap()
}

#[test]
fn an_order_is_asked_for_without_changing_it() {
    let clock = ManualClock::new(5_000);
    let engine = Engine::builder(held_catalog(10))
        .manual_clock(clock.clone())
        .start()
        .unwrap();
    let control = engine.control();
    let mut producer = engine.producer();
    let held = confirmed(producer.buy(intent(1, 1, 1, 2)).unwrap());
    let view = control.order(held.id).unwrap();
    assert_eq!(
        (view.user.0, view.sku, view.quantity),
        (1, SkuId(1), 2),
        "{view:?}"
    );
    let OrderStatus::Held {
        pay_by_ns: Some(pay_by),
    } = view.status
    else {
        panic!("a held order with a deadline, got {view:?}");
    };
    assert_eq!(
        pay_by,
        5_000 + HOLD_NS,
        "the deadline is the hold after arrival"
    );
    assert_eq!(
        control.order(held.id).unwrap(),
        view,
        "asking changes nothing"
    );

    let unheld = confirmed(producer.buy(intent(2, 1, 2, 1)).unwrap());
    assert_eq!(
        control.order(unheld.id).unwrap().status,
        OrderStatus::Held { pay_by_ns: None },
        "a SKU without a hold: no deadline"
    );
    control.pay(unheld.id).unwrap();
    assert_eq!(control.order(unheld.id).unwrap().status, OrderStatus::Paid);

    let cancelled = confirmed(producer.buy(intent(3, 1, 1, 1)).unwrap());
    control.cancel(cancelled.id).unwrap();
    assert_eq!(
        control.order(cancelled.id).unwrap().status,
        OrderStatus::Cancelled
    );

    clock.advance(2 * HOLD_NS);
    // Expiry runs with the shard's next command; a restock of another SKU is one.
    control.restock(SkuId(2), 1).unwrap();
    assert_eq!(control.order(held.id).unwrap().status, OrderStatus::Expired);

    let unknown = flashsale::OrderId::new(ShardId(0), 99);
    assert_eq!(
        control.order(unknown),
        Err(ControlError::UnknownOrder(unknown))
    );
    let other_shard = flashsale::OrderId::new(ShardId(7), 0);
    assert_eq!(
        control.order(other_shard),
        Err(ControlError::UnknownOrder(other_shard))
    );

    let sale = control.sale(SkuId(1)).unwrap();
    let levels = sale.levels;
    assert_eq!(
        (levels.stock, levels.available, levels.held, levels.sold),
        (10, 10, 0, 0),
        "both held orders are back on sale: {levels:?}"
    );
    assert_eq!(sale.state(control.now_ns()), "open");
    control.close_sale(SkuId(1)).unwrap();
    let closed = control.sale(SkuId(1)).unwrap();
    assert!(closed.closed_early);
    assert_eq!(closed.state(control.now_ns()), "closed");
    let all = control.sales().unwrap();
    assert_eq!(
        all.iter().map(|sale| sale.levels.id).collect::<Vec<_>>(),
        [SkuId(1), SkuId(2)]
    );
    let other = all[1].levels;
    assert_eq!((other.stock, other.sold, other.available), (4, 1, 3));
    assert_eq!(all[1].state(control.now_ns()), "open");
    assert_eq!(
        control.sale(SkuId(9)),
        Err(ControlError::UnknownSku(SkuId(9)))
    );
    let report = engine.shutdown();
    assert_eq!(report.confirmed_orders, 3);
    assert_eq!(control.order(held.id), Err(ControlError::ShutDown));
}

/// A page of sales is the whole read's slice from the SKU after the one asked, in catalog
/// order across shards, shorter only at the catalog's end; an `after` the catalog does not
/// have is refused by name; every shard answers the readiness question, and a stopped
/// engine says so.
#[test]
fn sales_are_read_a_page_at_a_time_in_catalog_order() {
    // Ids out of order, so that catalog order is not id order; three shards.
    let ids: Vec<u32> = (1..=40).map(|n| (n * 37) % 101).collect();
    let catalog = Catalog::builder()
        .skus(ids.iter().map(|&id| SkuSpec::new(SkuId(id), 5 + id % 7)))
        .build()
        .unwrap();
    let engine = Engine::builder(catalog).shards(3).start().unwrap();
    let control = engine.control();
    let mut producer = engine.producer();
    for (user, &id) in ids.iter().enumerate().step_by(3) {
        confirmed(producer.buy(intent(user as u64, 1, id, 2)).unwrap());
    }
    control.answering().unwrap();
    let all = control.sales().unwrap();
    assert_eq!(
        all.iter().map(|sale| sale.levels.id.0).collect::<Vec<_>>(),
        ids
    );
    for limit in [1, 7, 40, 41, usize::MAX] {
        let mut read = Vec::new();
        let mut after = None;
        loop {
            let page = control.sales_page(after, limit).unwrap();
            assert!(page.len() <= limit);
            let at_end = page.len() < limit || read.len() + page.len() == all.len();
            after = page.last().map(|sale| sale.levels.id);
            read.extend(page);
            if at_end {
                break;
            }
        }
        assert_eq!(read, all, "pages of {limit}");
    }
    assert_eq!(control.sales_page(Some(SkuId(ids[39])), 5).unwrap(), []);
    assert_eq!(control.sales_page(None, 0).unwrap(), []);
    assert_eq!(
        control.sales_page(Some(SkuId(1_000)), 5),
        Err(ControlError::UnknownSku(SkuId(1_000)))
    );
    drop(producer);
    drop(engine.shutdown());
    assert_eq!(control.answering(), Err(ControlError::ShutDown));
    assert_eq!(control.sales_page(None, 5), Err(ControlError::ShutDown));
}

/// A report of a large catalog names the SKUs that sold most and the totals of all, not a
/// line per SKU; a small catalog's has a line for each.
#[test]
fn a_report_of_many_skus_shows_the_busiest_and_the_totals() {
    let catalog = Catalog::builder()
        .skus((1..=100).map(|id| SkuSpec::new(SkuId(id), 10)))
        .build()
        .unwrap();
    let engine = Engine::builder(catalog).shards(2).start().unwrap();
    let mut producer = engine.producer();
    // SKU 3n holds min(n, 10) units for n in 1..=30 (orders not yet paid).
    for n in 1..=30u32 {
        for unit in 0..n.min(10) {
            confirmed(
                producer
                    .buy(intent(u64::from(n * 100 + unit), 1, 3 * n, 1))
                    .unwrap(),
            );
        }
    }
    drop(producer);
    let report = engine.shutdown();
    assert_eq!(report.skus.len(), 100);
    let text = report.to_string();
    let rows: Vec<u32> = text
        .lines()
        .skip_while(|line| !line.contains("product / variant"))
        .skip(1)
        .map_while(|line| line.split_whitespace().next()?.parse().ok())
        .collect();
    // Ties (SKUs 30 to 90 all sold 10) go to the earlier in the catalog.
    assert_eq!(rows, (10..=29).map(|n| 3 * n).collect::<Vec<_>>(), "{text}");
    let held: u64 = (1..=30u64).map(|n| n.min(10)).sum();
    let all = format!(
        "{:>8}  {:<24}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "all",
        "100 SKUs",
        1_000,
        held,
        0,
        0,
        1_000 - held
    );
    assert!(text.contains("     ...  80 more SKUs"), "{text}");
    assert!(text.contains(&all), "{all:?} in\n{text}");

    let small = Engine::builder(held_catalog(3)).start().unwrap().shutdown();
    assert!(!small.to_string().contains("more SKUs"));
    assert_eq!(
        small
            .to_string()
            .lines()
            .filter(|line| line.trim_start().starts_with(['1', '2']))
            .count(),
        2
    );
}

/// Collects every event its shard hands it.
struct Events(Arc<Mutex<Vec<OrderEvent>>>);

impl OrderSink for Events {
    fn on_confirmed(&mut self, _: &Order) {}
    fn wants_events(&self) -> bool {
        true
    }
    fn on_event(&mut self, event: &OrderEvent) {
        self.0.lock().unwrap().push(*event);
    }
}

#[test]
fn the_sink_sees_every_event_as_a_replay_of_the_journal_records_them() {
    let dir = scratch("events");
    let clock = ManualClock::new(1_000);
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 2).limit(1).hold(HOLD_NS).waitlist(4))
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let engine = {
        let seen = seen.clone();
        Engine::builder(catalog.clone())
            .manual_clock(clock.clone())
            .journal(JournalConfig::durable(&dir))
            .order_sink(move |_| Events(seen.clone()))
            .start()
            .unwrap()
    };
    let control = engine.control();
    let mut producer = engine.producer();
    let first = confirmed(producer.buy(intent(1, 1, 1, 1)).unwrap());
    let second = confirmed(producer.buy(intent(2, 1, 1, 1)).unwrap());
    let ticket = producer.submit_or_wait(intent(3, 1, 1, 1)).unwrap();
    assert!(
        matches!(ticket, flashsale::Submitted::Queued(_)),
        "{ticket:?}"
    );
    control.pay(first.id).unwrap();
    // The cancelled unit goes to the buyer waiting.
    control.cancel(second.id).unwrap();
    clock.advance(2 * HOLD_NS);
    control.restock(SkuId(1), 1).unwrap();
    let report = engine.shutdown();
    assert_eq!(report.confirmed_orders, 3);

    let seen = seen.lock().unwrap().clone();
    let kinds: Vec<_> = seen
        .iter()
        .map(|event| (event.kind, event.order.number()))
        .collect();
    assert_eq!(
        kinds,
        [
            (OrderEventKind::Confirmed, 0),
            (OrderEventKind::Confirmed, 1),
            (OrderEventKind::Paid, 0),
            (OrderEventKind::Cancelled, 1),
            (OrderEventKind::Confirmed, 2),
            (OrderEventKind::Expired, 2),
        ],
        "{seen:#?}"
    );
    assert!(
        seen.windows(2)
            .all(|pair| pair[0].sequence <= pair[1].sequence)
    );

    let config = JournalConfig::durable(&dir);
    let journal = flashsale::journal::read(&config.path_of(ShardId(0))).unwrap();
    let mut core = ShardCore::whole(&catalog);
    core.record_events(true);
    let mut replayed = Vec::new();
    for (_, command) in &journal.records {
        core.apply(command);
        replayed.extend(core.take_events());
    }
    assert_eq!(replayed, seen, "the journal is the log of the events");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_journal_directory_refuses_another_catalog_or_shard_count_or_no_manifest() {
    let dir = scratch("manifest");
    let two_skus = |stock| {
        Catalog::builder()
            .sku(SkuSpec::new(SkuId(1), stock))
            .sku(SkuSpec::new(SkuId(2), 5))
            .build()
            .unwrap()
    };
    let engine = Engine::builder(two_skus(5))
        .journal(JournalConfig::durable(&dir))
        .start()
        .unwrap();
    confirmed(engine.producer().buy(intent(1, 1, 1, 1)).unwrap());
    engine.shutdown();

    let refused = |builder: flashsale::EngineBuilder| match builder
        .journal(JournalConfig::durable(&dir))
        .start()
    {
        Err(EngineError::JournalMismatch { what, .. }) => what,
        Err(EngineError::ManifestDamaged { manifest }) => {
            assert_eq!(manifest, dir.join("flashsale.manifest"));
            "damaged"
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("started on another catalog's journal"),
    };
    assert_eq!(refused(Engine::builder(two_skus(1))), "catalog fingerprint");
    assert_eq!(
        refused(Engine::builder(two_skus(5)).shards(2)),
        "shard count"
    );
    let relabelled = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 5).labels("Renamed", "same"))
        .sku(SkuSpec::new(SkuId(2), 5))
        .build()
        .unwrap();
    let engine = Engine::builder(relabelled)
        .journal(JournalConfig::durable(&dir))
        .start()
        .expect("labels do not decide outcomes");
    assert_eq!(engine.available(SkuId(1)), Some(4), "recovered");
    engine.shutdown();

    // Every bit of the manifest flipped, its title's too, is refused: as damage, or where
    // the flip leaves another sale's manifest whole (another fingerprint or shard count),
    // as that. Nothing is read past.
    let path = dir.join("flashsale.manifest");
    let manifest = std::fs::read(&path).unwrap();
    for bit in 0..manifest.len() * 8 {
        let mut damaged = manifest.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&path, &damaged).unwrap();
        let what = refused(Engine::builder(two_skus(5)));
        let title = bit / 8 < manifest.iter().position(|&byte| byte == b'\n').unwrap();
        assert!(
            ["damaged", "catalog fingerprint", "shard count"].contains(&what)
                && (!title || what == "damaged"),
            "bit {bit}: {what}"
        );
    }
    std::fs::write(&path, &manifest).unwrap();
    Engine::builder(two_skus(5))
        .journal(JournalConfig::durable(&dir))
        .start()
        .expect("the manifest written back")
        .shutdown();

    std::fs::write(dir.join("flashsale.manifest"), "garbage").unwrap();
    assert_eq!(refused(Engine::builder(two_skus(5))), "damaged");

    // No manifest beside a journal: refused under its own catalog too, nothing written.
    std::fs::remove_file(dir.join("flashsale.manifest")).unwrap();
    match Engine::builder(two_skus(5))
        .journal(JournalConfig::durable(&dir))
        .start()
    {
        Err(EngineError::ManifestMissing { found, .. }) => {
            assert_eq!(found, dir.join("shard-00000.fsj"));
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("adopted a journal no manifest vouches for"),
    }
    assert!(!dir.join("flashsale.manifest").exists());
    // A directory with no journal or snapshot gets its manifest.
    std::fs::remove_file(dir.join("shard-00000.fsj")).unwrap();
    let engine = Engine::builder(two_skus(5))
        .journal(JournalConfig::durable(&dir))
        .start()
        .expect("a directory with no journal starts afresh");
    assert_eq!(engine.available(SkuId(1)), Some(5));
    engine.shutdown();
    assert!(dir.join("flashsale.manifest").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
