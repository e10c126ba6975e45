//! The `Mutex<model>` peer: the reference model behind one `Mutex`, called straight from
//! the producer threads.

use super::*;

pub(super) fn mutex_peer(scenario: &Scenario) -> Result<PeerJson, String> {
    let plan = Plan::new(scenario)?;
    // Room for every order the sale can make, up front, as the engine's cores have.
    let stock: usize = plan
        .catalog
        .skus()
        .iter()
        .map(|sku| sku.stock as usize)
        .sum();
    let model = Mutex::new(Model::whole_with_capacity(&plan.catalog, stock));
    let clock = EngineClock::start();
    let max_quantity = max_quantity(scenario);
    let ran = on_threads(plan, |_, schedule, catalog, mut tally| {
        let mut sampler = run::Sampler::new(scenario.latency_sample);
        for press in schedule {
            let sent = tally.sent_at(&mut sampler, || clock.now_ns());
            tally.submitted += 1;
            let outcome = validate(&press.intent, catalog, max_quantity).unwrap_or_else(|| {
                model
                    .lock()
                    .expect("no panics while held")
                    .buy(&press.intent, 0)
                    .outcome()
                    .expect("compare runs first-come sales: every buy is decided at once")
            });
            let now = tally.answered_at(sent, || clock.now_ns());
            run::record(&mut tally, catalog, 0, press.intent, outcome, sent, now);
        }
        tally
    })?;
    let model = model.into_inner().expect("no panics while held");
    let decided = ran.0.outcomes;
    Ok(finish(
        "mutex",
        "Mutex<reference model>".into(),
        format!("{} producers", scenario.producers),
        scenario,
        ran,
        &model.levels(),
        decided,
    ))
}
