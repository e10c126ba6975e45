//! Reading the JSON the binary prints and serves, shared by the simulator's, the service's
//! and the cluster's tests: a `flashsale compare --json` peer row, a page of `GET /sales`.
//! Kept apart from `common`, which a fuzz target builds without `serde_json`.
#![allow(dead_code)]

/// Every invariant the run checked held in this JSON report (a `simulate` run or a
/// `compare` peer).
pub fn assert_invariants_hold(report: &serde_json::Value) {
    for check in [
        "one_outcome_per_intent",
        "no_oversell",
        "no_undersell",
        "limits_held",
    ] {
        assert_eq!(report["invariants"][check], true, "{check} in {report}");
    }
}

/// Every invariant the run checked held for `peer`, it answered each of the `intents` once,
/// and it sold exactly `units` units.
pub fn assert_peer_sold(peer: &serde_json::Value, intents: u64, units: u64) {
    assert_invariants_hold(peer);
    assert_eq!(
        peer["intents"].as_u64(),
        Some(intents),
        "same intents: {peer}"
    );
    assert_eq!(peer["confirmed_units"].as_u64(), Some(units), "{peer}");
    let answered: u64 = peer["rejections"]
        .as_object()
        .unwrap()
        .values()
        .map(|count| count.as_u64().unwrap())
        .sum::<u64>()
        + peer["confirmed_orders"].as_u64().unwrap();
    assert_eq!(answered, intents, "every intent answered once: {peer}");
}

/// The SKU ids of a page of `GET /sales` (`{"sales": [{"sku": …}, …], "next": …}`), in order.
pub fn page_skus(page: &serde_json::Value) -> Vec<u64> {
    page["sales"]
        .as_array()
        .expect("a page's sales")
        .iter()
        .map(|sale| sale["sku"].as_u64().expect("a sale's sku"))
        .collect()
}
