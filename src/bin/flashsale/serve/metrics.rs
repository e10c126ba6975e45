//! `GET /metrics`: Prometheus text format.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::Server;

/// One `name{labels} value` line.
fn line(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// `serve --nats`: what the gateway did.
#[cfg(feature = "cluster")]
fn gateway_metrics(out: &mut String, gateway: &flashsale::cluster::Gateway) {
    let stats = gateway.stats();
    for (name, text, value) in [
        (
            "batches",
            "Batches of buys published to the logs.",
            stats.batches,
        ),
        (
            "batches_acked",
            "Of those, acknowledged by JetStream.",
            stats.acked,
        ),
        (
            "batches_unacked",
            "Of those, not acknowledged in time.",
            stats.unacked,
        ),
        (
            "resubmitted",
            "Buys published again for want of an answer.",
            stats.resubmitted,
        ),
        (
            "turned_away",
            "Buys answered sold out by the gate, without the log.",
            stats.turned_away,
        ),
        (
            "gate_fetches",
            "Whole key filters fetched from a partition's leader.",
            stats.gate_fetches,
        ),
    ] {
        let name = format!("flashsale_gateway_{name}_total");
        help(out, &name, "counter", text);
        line(out, &name, "", value);
    }
    help(
        out,
        "flashsale_gateway_pending",
        "gauge",
        "Buys not answered yet.",
    );
    line(out, "flashsale_gateway_pending", "", gateway.pending());
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

/// Answers by status and reason, the engine's part of each buy, lanes in flight, units
/// available per SKU, orders confirmed, events in the feed.
pub async fn metrics(State(server): State<Arc<Server>>) -> Response {
    server.counts.count(200, "ok");
    let mut out = String::new();
    help(
        &mut out,
        "flashsale_http_answers_total",
        "counter",
        "HTTP answers, by status and reason.",
    );
    for (status, reason, count) in server.counts.all() {
        line(
            &mut out,
            "flashsale_http_answers_total",
            &format!(r#"status="{status}",reason="{reason}""#),
            count,
        );
    }
    help(
        &mut out,
        "flashsale_engine_buy_seconds",
        "summary",
        "The engine's part of each buy: from the submit to the outcome, HTTP excluded.",
    );
    {
        let latency = server.latency.lock();
        for quantile in [0.5, 0.9, 0.99, 0.999, 1.0] {
            line(
                &mut out,
                "flashsale_engine_buy_seconds",
                &format!(r#"quantile="{quantile}""#),
                latency.value_at_quantile(quantile) as f64 / 1e9,
            );
        }
        line(
            &mut out,
            "flashsale_engine_buy_seconds_count",
            "",
            latency.len(),
        );
    }
    #[cfg(feature = "cluster")]
    if let Some(gateway) = server.gateway.get() {
        gateway_metrics(&mut out, gateway);
    }
    #[cfg(feature = "cluster")]
    if let Some(followed) = &server.followed {
        help(
            &mut out,
            "flashsale_feed_caught_up",
            "gauge",
            "1 once this gateway's follower has applied every entry the logs held at its start (the feed answers 503 until then).",
        );
        line(
            &mut out,
            "flashsale_feed_caught_up",
            "",
            u8::from(followed.caught_up()),
        );
        order_events(&mut out, &followed.feed().lengths());
    }
    let Some(running) = server.running.get() else {
        return text(out);
    };
    help(
        &mut out,
        "flashsale_client_lane_in_flight",
        "gauge",
        "Intents in flight on each async-client lane.",
    );
    for (lane, in_flight) in running.client.in_flight().into_iter().enumerate() {
        line(
            &mut out,
            "flashsale_client_lane_in_flight",
            &format!(r#"lane="{lane}""#),
            in_flight,
        );
    }
    help(
        &mut out,
        "flashsale_sku_available",
        "gauge",
        "Units of each SKU available, as its shard last published.",
    );
    for spec in server.catalog.skus() {
        let available = running.engine.available(spec.id).unwrap_or(0);
        line(
            &mut out,
            "flashsale_sku_available",
            &format!(r#"sku="{}""#, spec.id.0),
            available,
        );
    }
    let live = running.engine.live();
    help(
        &mut out,
        "flashsale_confirmed_orders_total",
        "counter",
        "Orders the engine confirmed since this process started.",
    );
    line(
        &mut out,
        "flashsale_confirmed_orders_total",
        "",
        live.confirmed_orders,
    );
    help(
        &mut out,
        "flashsale_decided_by_shards_total",
        "counter",
        "Intents the shards decided since this process started.",
    );
    line(
        &mut out,
        "flashsale_decided_by_shards_total",
        "",
        live.decided_by_shards,
    );
    let control = running.engine.control();
    let failed = control.failures();
    let snapshots = control.snapshot_failures();
    let shards = running.engine.placement().shards();
    per_shard(
        &mut out,
        "flashsale_shard_failed",
        "gauge",
        "1 for each shard that failed (its journal could not be written, or its order sink panicked; serve's log says why): it answers shard_failed until serve is restarted.",
        (0..shards).map(|shard| u64::from(failed.iter().any(|(id, _)| usize::from(id.0) == shard))),
    );
    per_shard(
        &mut out,
        "flashsale_snapshots_failed_total",
        "counter",
        "Snapshots a shard could not write (it goes on; a restart replays more of its journal; serve's log says why).",
        (0..shards).map(|shard| {
            snapshots
                .iter()
                .find(|(id, _, _)| usize::from(id.0) == shard)
                .map_or(0, |(_, count, _)| *count)
        }),
    );
    order_events(&mut out, &running.feed.lengths());
    text(out)
}

/// The feed's events per shard (a cluster's: per partition).
fn order_events(out: &mut String, lengths: &[usize]) {
    per_shard(
        out,
        "flashsale_order_events",
        "gauge",
        "Order events in the feed, per shard (since the sale began).",
        lengths.iter().map(|&events| events as u64),
    );
}

/// A metric with one value per shard, labelled `shard="N"`.
fn per_shard(
    out: &mut String,
    name: &str,
    kind: &str,
    text: &str,
    values: impl Iterator<Item = u64>,
) {
    help(out, name, kind, text);
    for (shard, value) in values.enumerate() {
        line(out, name, &format!(r#"shard="{shard}""#), value);
    }
}

fn text(out: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response()
}
