//! The `flashsale simulate` binary, end to end: good and bad scenarios, a small run whose
//! counts add up, and the JSON keys a capacity planner's tooling reads.
#![cfg(feature = "cli")]

use std::process::{Command, Output};

mod common;
mod peers;

/// Runs `flashsale SUBCOMMAND ARGS...`.
fn flashsale(subcommand: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .arg(subcommand)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn simulate(args: &[&str]) -> Output {
    flashsale("simulate", &[&["--quiet"], args].concat())
}

fn stderr_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_string()
}

use peers::assert_invariants_hold;

/// A sneaker drop shrunk to 20,000 viewers, so that it runs in well under a second.
const SMALL: [&str; 4] = ["--viewers", "20000", "--speed", "10"];

#[test]
fn impossible_knobs_exit_2_naming_the_field() {
    for (args, field) in [
        (vec!["--producers", "0"], "producers"),
        (vec!["--shards", "5"], "shards"),
        (vec!["--ring-capacity", "0"], "ring_capacity"),
        (vec!["--rate", "0"], "--rate"),
        (vec!["--scenario", "black-friday"], "scenario"),
    ] {
        let output = simulate(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let message = stderr_line(&output);
        assert!(message.contains(field), "{args:?}: {message}");
    }
}

#[test]
fn malformed_scenario_file_exits_2_with_one_line() {
    let dir = std::env::temp_dir().join(format!("flashsale-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_field = dir.join("bad_field.toml");
    std::fs::write(&bad_field, "name = \"x\"\nstok_per_product = 10\n").unwrap();
    let bad_value = dir.join("bad_value.toml");
    std::fs::write(&bad_value, "press_fraction = 3.0\n").unwrap();
    let dev_zero = std::path::PathBuf::from("/dev/zero");
    for (path, field) in [
        (&bad_field, "stok_per_product"),
        (&bad_value, "press_fraction"),
        // A device that never ends and a directory are refused, not read.
        (&dev_zero, "not a file"),
        (&dir, "not a file"),
    ] {
        let output = simulate(&["--file", path.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2));
        let message = stderr_line(&output);
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(message.contains(field), "{message}");
    }
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "name = \"tiny\"\nviewers_min = 3000\nviewers_max = 3000\nstock_per_product = 200\n\
         variants_per_product = 4\nspeed = 20.0\n",
    )
    .unwrap();
    let output = simulate(&["--file", good.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr_line(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("scenario tiny"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn small_run_accounts_for_every_intent_and_keeps_json_keys() {
    let mut args = SMALL.to_vec();
    args.push("--json");
    let output = simulate(&args);
    assert!(output.status.success(), "{}", stderr_line(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for key in [
        "scenario",
        "elapsed_s",
        "intents",
        "intents_per_s",
        "confirmed_orders",
        "confirmed_units",
        "rejections",
        "answered_at_submit",
        "invariants",
        "latency_ns",
        "engine_latency_ns",
        "peak_memory_bytes",
        "skus",
        "timeline",
        "wait_latency_ns",
        "lifecycle",
        "pools",
        "headline",
        "offered_per_s",
        "peak_offered_per_s",
        "achieved_per_s",
        "peak_achieved_per_s",
        "saturated",
        "opens_at_run_ms",
    ] {
        assert!(report.get(key).is_some(), "missing key {key}");
    }
    // The headline puts what was sustained beside what was offered.
    let headline = report["headline"].as_str().unwrap();
    assert!(
        headline.starts_with("sustained ") && headline.contains("offered; p99 "),
        "{headline}"
    );
    // Every timeline point splits its outcomes into confirmed and rejected.
    let mut confirmed_in_timeline = 0.0;
    for point in report["timeline"].as_array().unwrap() {
        let all = point["intents_per_s"].as_f64().unwrap();
        let confirmed = point["confirmed_per_s"].as_f64().unwrap();
        let rejected = point["rejected_per_s"].as_f64().unwrap();
        assert!((confirmed + rejected - all).abs() < 1e-6, "{point}");
        confirmed_in_timeline += confirmed / 100.0;
    }
    for key in [
        "samples", "p50", "p90", "p99", "p99_9", "p99_99", "max", "mean",
    ] {
        assert!(
            report["latency_ns"].get(key).is_some(),
            "missing latency key {key}"
        );
    }
    let intents = report["intents"].as_u64().unwrap();
    let rejected: u64 = report["rejections"]
        .as_object()
        .unwrap()
        .values()
        .map(|count| count.as_u64().unwrap())
        .sum();
    let confirmed = report["confirmed_orders"].as_u64().unwrap();
    assert_eq!(
        confirmed + rejected,
        intents,
        "every intent has exactly one outcome"
    );
    assert_eq!(report["latency_ns"]["samples"].as_u64().unwrap(), intents);
    assert_eq!(confirmed_in_timeline.round() as u64, confirmed);
    assert_invariants_hold(&report);
    // 20,000 viewers chase 5,000 pairs: all sell, to the unit.
    assert_eq!(report["confirmed_units"].as_u64().unwrap(), 5_000);
    let skus = report["skus"].as_array().unwrap();
    assert_eq!(skus.len(), 12);
    for sku in skus {
        assert_eq!(
            sku["sold"].as_u64().unwrap() + sku["remaining"].as_u64().unwrap(),
            sku["stock"].as_u64().unwrap()
        );
    }
}

/// A drawn, paid-for sale with a waitlist: the draw's seed and pool are reported, every
/// unit is accounted for as held, sold, expired or cancelled, and the invariants hold.
#[test]
fn a_draw_with_payments_holds_and_a_waitlist_accounts_for_every_unit() {
    let mut args = SMALL.to_vec();
    args.extend([
        "--json",
        "--policy",
        "opening-draw",
        "--seed",
        "7",
        "--pay-rate",
        "0.6",
        "--cancel-rate",
        "0.2",
        "--pay-delay-ms",
        "200",
        // Five seconds of sale time, half a second at --speed 10: a payment due 20 ms
        // after its confirmation is made in time even when the tests running beside this
        // one starve the desk's thread for a while (at 1,000 it could miss every hold).
        "--hold-ms",
        "5000",
        "--waitlist",
        "50",
    ]);
    let output = simulate(&args);
    assert!(output.status.success(), "{}", stderr_line(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_invariants_hold(&report);
    let pools = report["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0]["policy"], "opening-draw");
    assert_eq!(pools[0]["seed"], 7);
    assert!(pools[0]["pooled_buyers"].as_u64().unwrap() > 1_000);
    let life = &report["lifecycle"];
    let units = |key: &str| life[key].as_u64().unwrap();
    assert_eq!(
        units("held_units")
            + units("sold_units")
            + units("expired_units")
            + units("cancelled_units"),
        report["confirmed_units"].as_u64().unwrap(),
        "every confirmed unit is held, sold, expired or cancelled"
    );
    assert!(units("sold_units") > 0 && units("cancelled_units") > 0);
    assert!(
        units("payments_refused_hold_expired") > 0,
        "late payers are refused"
    );
    assert!(report["wait_latency_ns"]["samples"].as_u64().unwrap() > 0);
    let intents = report["intents"].as_u64().unwrap();
    let rejected: u64 = report["rejections"]
        .as_object()
        .unwrap()
        .values()
        .map(|count| count.as_u64().unwrap())
        .sum();
    assert_eq!(
        report["confirmed_orders"].as_u64().unwrap() + rejected,
        intents
    );
    // compare only runs first-come sales without payments, and says so.
    let file = std::env::temp_dir().join(format!("flashsale-draw-{}.toml", std::process::id()));
    std::fs::write(&file, "policy = \"opening-draw\"\n").unwrap();
    let refused = compare(&["--file", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr_line(&refused).starts_with("error: policy:"),
        "{}",
        stderr_line(&refused)
    );
}

/// `--journal DIR` runs the scenario in memory and journaled; the journaled run commits and
/// keeps every invariant; a directory that already holds something is refused.
#[test]
fn a_journaled_run_sits_beside_the_in_memory_one() {
    let dir = std::env::temp_dir().join(format!("flashsale-sim-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut args = SMALL.to_vec();
    let dir_arg = dir.to_str().unwrap().to_string();
    args.extend(["--json", "--journal", &dir_arg]);
    let output = simulate(&args);
    assert!(output.status.success(), "{}", stderr_line(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["in_memory"]["journal_commits"], 0);
    assert!(report["journaled"]["journal_commits"].as_u64().unwrap() > 0);
    for run in ["in_memory", "journaled"] {
        assert_eq!(report[run]["confirmed_units"], 5_000, "{run}");
        assert_eq!(report[run]["invariants"]["no_oversell"], true, "{run}");
    }
    assert!(dir.join("shard-00000.fsj").exists());
    // Again into the same directory: refused, naming the field.
    let again = simulate(&["--journal", &dir_arg]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr_line(&again).starts_with("error: journal:"),
        "{}",
        stderr_line(&again)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A shard whose orders outgrow the room it made says so before the run, and its order
/// book grows mid-sale without losing an order; with room for them it says nothing.
#[test]
fn a_shard_past_its_order_room_is_noted_and_grows_without_loss() {
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("room.toml");
    std::fs::write(
        &file,
        "name = \"room\"\nvariants_per_product = 1\nstock_per_product = 100000\n\
         viewers_min = 20000\nviewers_max = 20000\nretry_fraction = 0.0\n\
         malformed_fraction = 0.0\ntwo_units_fraction = 0.0\nmode = \"closed\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    for (room, noted) in [(Some("1000"), true), (None, false), (Some("20000"), false)] {
        let mut args = vec!["--file", file, "--json"];
        if let Some(room) = room {
            args.extend(["--order-capacity", room]);
        }
        let output = simulate(&args);
        assert!(output.status.success(), "{}", stderr_line(&output));
        let note = stderr_line(&output);
        assert_eq!(note.contains("grows mid-sale"), noted, "{room:?}: {note}");
        if noted {
            assert!(note.contains("with room for 1024 orders"), "{note}");
        }
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["confirmed_orders"], 20_000, "{room:?}");
        assert_eq!(
            report["scenario"]["order_capacity"],
            room.map_or(serde_json::Value::Null, |room| room
                .parse::<u64>()
                .unwrap()
                .into())
        );
        assert_invariants_hold(&report);
    }
}

#[test]
fn closed_loop_and_rate_sweep_run() {
    let mut args = SMALL.to_vec();
    args.extend(["--mode", "closed", "--producers", "2", "--json"]);
    let output = simulate(&args);
    assert!(output.status.success(), "{}", stderr_line(&output));
    // A closed loop's headline rate is the run's own: its intents over its time, not
    // whole 10 ms buckets counted from before its producers started.
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let (achieved, measured) = (
        report["achieved_per_s"].as_f64().unwrap(),
        report["intents_per_s"].as_f64().unwrap(),
    );
    assert!(
        (achieved - measured).abs() <= 1e-9 * measured,
        "{achieved} against {measured}"
    );
    let headline = report["headline"].as_str().unwrap();
    assert!(
        headline.contains("(2 producers sending as fast as answered)"),
        "{headline}"
    );
    let output = simulate(&[
        "--scenario",
        "steady",
        "--intents",
        "20000",
        "--rates",
        "100k,200k",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr_line(&output));
    let sweep: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = sweep.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["offered_per_s"].as_f64().unwrap(), 200_000.0);
    assert!(rows.iter().all(|row| row["invariants_hold"] == true));
    // Each row says whether the engine kept up, by the rule the table states.
    for row in rows {
        let (offered, achieved) = (
            row["offered_per_s"].as_f64().unwrap(),
            row["achieved_per_s"].as_f64().unwrap(),
        );
        assert_eq!(row["saturated"], achieved < 0.95 * offered, "{row}");
    }
    let output = simulate(&[
        "--scenario",
        "steady",
        "--intents",
        "20000",
        "--rates",
        "100k",
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("held at every rate"), "{text}");
}

/// `fsync` removes its scratch file from the directory as soon as it is open, so a run
/// stopped by SIGTERM (or anything) leaves nothing behind.
#[cfg(target_os = "linux")]
#[test]
fn a_killed_fsync_probe_leaves_no_file() {
    let dir = std::env::temp_dir().join(format!("flashsale-fsync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(["fsync", "--count", "100000", "--dir", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let it start appending (or finish, on a very fast disk: then the file is gone too).
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn compare(args: &[&str]) -> Output {
    flashsale("compare", &[&["--quiet"], args].concat())
}

#[test]
fn compare_runs_every_in_process_peer_on_the_same_intents() {
    let output = compare(&["--viewers", "20000", "--producers", "2", "--json"]);
    assert!(output.status.success(), "{}", stderr_line(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let peers = report["peers"].as_array().expect("peers");
    let names: Vec<&str> = peers
        .iter()
        .map(|peer| peer["peer"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["engine", "mutex", "crossbeam"]);
    let intents = peers[0]["intents"].as_u64().unwrap();
    assert!(intents > 10_000);
    for peer in peers {
        for key in [
            "detail",
            "threads",
            "elapsed_s",
            "intents_per_s",
            "engine_speedup",
            "confirmed_orders",
            "rejections",
            "latency_ns",
        ] {
            assert!(peer.get(key).is_some(), "{key} missing in {peer}");
        }
        // Demand is far above stock: every peer sells exactly all 5,000 units.
        peers::assert_peer_sold(peer, intents, 5_000);
        // One intent in 64 is timed by default: each producer times its first, then
        // every 64th.
        let samples = peer["latency_ns"]["samples"].as_u64().unwrap();
        assert!(
            (intents / 64..=intents / 64 + 2).contains(&samples),
            "{samples} samples of {intents} intents: {peer}"
        );
    }
    assert_eq!(report["scenario"]["latency_sample"].as_u64(), Some(64));
    // Each ratio is computed from the rates beside it, not written by hand.
    let engine_rate = peers[0]["intents_per_s"].as_f64().unwrap();
    for peer in &peers[1..] {
        let expected = engine_rate / peer["intents_per_s"].as_f64().unwrap();
        let speedup = peer["engine_speedup"].as_f64().unwrap();
        assert!(
            (speedup - expected).abs() <= expected * 0.01,
            "{speedup} vs {expected}: {peer}"
        );
    }
}

/// `--latency-sample 1` times every intent in every peer, and a closed-loop simulation
/// samples as asked, with every intent still counted and checked.
#[test]
fn latency_sampling_times_as_many_intents_as_asked() {
    let output = compare(&[
        "--viewers",
        "20000",
        "--latency-sample",
        "1",
        "--skip",
        "crossbeam",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr_line(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    for peer in report["peers"].as_array().unwrap() {
        assert_invariants_hold(peer);
        assert_eq!(peer["latency_ns"]["samples"], peer["intents"], "{peer}");
    }
    for (sample, producers) in [(1u64, 1u64), (10, 1), (10, 2)] {
        let mut args = SMALL.to_vec();
        let sample_text = sample.to_string();
        let producers_text = producers.to_string();
        args.extend([
            "--mode",
            "closed",
            "--latency-sample",
            &sample_text,
            "--producers",
            &producers_text,
            "--json",
        ]);
        let output = simulate(&args);
        assert!(output.status.success(), "{}", stderr_line(&output));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_invariants_hold(&report);
        let presses = report["intents"].as_u64().unwrap();
        let samples = report["latency_ns"]["samples"].as_u64().unwrap();
        assert!(
            (presses / sample..=presses / sample + producers).contains(&samples),
            "{samples} samples of {presses} presses, one in {sample}: {report}"
        );
    }
    // The open loop times every press from its intended send time, whatever the knob.
    let mut args = SMALL.to_vec();
    args.extend(["--latency-sample", "10", "--json"]);
    let output = simulate(&args);
    assert!(output.status.success(), "{}", stderr_line(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["latency_ns"]["samples"], report["intents"],
        "{report}"
    );
}

#[test]
fn compare_refuses_bad_knobs_with_exit_2() {
    for (args, field) in [
        (vec!["--skip", "postgres"], "skip"),
        (vec!["--redis-connections", "0"], "redis-connections"),
        (vec!["--latency-sample", "0"], "latency_sample"),
        (vec!["--nats-replicas", "0"], "nats-replicas"),
        (vec!["--nats-replicas", "6"], "nats-replicas"),
        (vec!["--nats-in-flight", "0"], "nats-in-flight"),
        (vec!["--shards", "0"], "shards"),
    ] {
        let output = compare(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let message = stderr_line(&output);
        assert!(message.contains(field), "{args:?}: {message}");
    }
}

/// A peer on a server that cannot be reached (or that this build lacks) is refused before
/// any row runs, not after the in-process rows: the only line on standard error is the
/// refusal (the engine's row would first note its shard's small room for orders).
#[test]
fn a_peer_server_that_cannot_be_reached_is_refused_before_any_row() {
    for (peer, field) in [
        (["--redis", "127.0.0.1:1"], "redis"),
        (["--nats", "nats://127.0.0.1:1"], "nats"),
    ] {
        let output =
            compare(&[&["--viewers", "20000", "--order-capacity", "8"][..], &peer].concat());
        assert_eq!(output.status.code(), Some(2), "{peer:?}");
        let message = stderr_line(&output);
        assert!(
            message.starts_with(&format!("error: {field}:")) && !message.contains('\n'),
            "{peer:?}: {message}"
        );
        assert!(output.stdout.is_empty(), "{peer:?}");
    }
}

#[cfg(not(feature = "redis-peer"))]
#[test]
fn compare_without_the_redis_peer_says_how_to_get_it() {
    let output = compare(&["--redis", "127.0.0.1:1", "--skip", "engine,mutex,crossbeam"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr_line(&output).contains("redis-peer"));
}

#[cfg(not(feature = "cluster"))]
#[test]
fn compare_without_the_cluster_peer_says_how_to_get_it() {
    let output = compare(&[
        "--nats",
        "nats://127.0.0.1:1",
        "--skip",
        "engine,mutex,crossbeam",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr_line(&output).contains("--features cluster"));
}

#[cfg(not(feature = "cluster"))]
#[test]
fn simulate_on_a_cluster_says_how_to_get_it() {
    let output = simulate(&["--nats", "nats://127.0.0.1:1", "--intents", "1000"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr_line(&output).contains("--features cluster"));
}

#[test]
fn simulate_on_a_cluster_refuses_what_it_cannot_run() {
    let journal = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("nats-journal");
    for (args, says) in [
        (vec!["--rates", "1M"], "--rates"),
        (vec!["--journal", journal.to_str().unwrap()], "--journal"),
        (vec!["--nats-replicas", "0"], "nats-replicas"),
    ] {
        let output = simulate(&[&["--nats", "nats://127.0.0.1:1"], &args[..]].concat());
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr_line(&output).contains(says),
            "{}",
            stderr_line(&output)
        );
    }
}

#[test]
fn fsync_probe_measures_the_disk() {
    let output = flashsale(
        "fsync",
        &["--dir", env!("CARGO_TARGET_TMPDIR"), "--count", "20"],
    );
    assert!(output.status.success(), "{}", stderr_line(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("fdatasync"));
    let output = flashsale("fsync", &["--count", "0"]);
    assert_eq!(output.status.code(), Some(2));
    // A directory in memory is named as such: its syncs reach no disk.
    if !common::dev_shm_is_tmpfs() {
        println!("skipped the tmpfs note: /dev/shm is not a tmpfs mount here");
        return;
    }
    let output = flashsale("fsync", &["--dir", "/dev/shm", "--count", "5", "--json"]);
    assert!(output.status.success(), "{}", stderr_line(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["in_memory_filesystem"], "tmpfs");
    assert!(
        stderr_line(&output).contains("is on tmpfs, in memory"),
        "{}",
        stderr_line(&output)
    );
}

#[test]
fn hiccups_measures_and_refuses_bad_knobs() {
    let run = |args: &[&str]| flashsale("hiccups", args);
    let output = run(&["--threads", "1", "--seconds", "0.2"]);
    assert!(output.status.success(), "{}", stderr_line(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("10.0 µs") && text.contains("longest"),
        "{text}"
    );
    for (args, field) in [
        (["--threads", "0"], "threads"),
        (["--seconds", "0"], "seconds"),
    ] {
        let output = run(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(stderr_line(&output).contains(field));
    }
}

/// One knob of a subcommand and its range; `refused_at_max` names the knob an estimate
/// blames when the maximum alone is more than a run may take.
struct Knob {
    subcommand: &'static str,
    flag: &'static str,
    field: &'static str,
    min: u64,
    max: u64,
    type_max: u64,
    extra: &'static [&'static str],
    refused_at_max: Option<&'static str>,
    /// In range, run it for real rather than only checking (`simulate --estimate`).
    run_in_range: bool,
}

/// Every size and time knob of every subcommand at 0, 1, its maximum, its maximum + 1 and
/// its type's maximum: in range it passes every check (for `simulate`, `--estimate` checks
/// the knobs and the run's memory and time estimates and runs nothing); out of range the
/// command exits 2 with one line that starts with the knob, before allocating what it
/// asked for (a run that tried would abort, hang or be killed instead).
#[test]
fn every_knob_is_bounded_and_refused_by_name() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let week_ms = 7 * 24 * 3_600 * 1_000;
    let (u32_max, u64_max) = (u64::from(u32::MAX), u64::MAX);
    let simulate_knob = |flag, field, min, max, type_max, extra| Knob {
        subcommand: "simulate",
        flag,
        field,
        min,
        max,
        type_max,
        extra,
        refused_at_max: None,
        run_in_range: false,
    };
    let knobs = [
        simulate_knob("--producers", "producers", 1, 256, u32_max, &[]),
        simulate_knob(
            "--shards",
            "shards",
            1,
            256,
            u32_max,
            &["--scenario", "micro-shows"],
        ),
        simulate_knob("--ring-capacity", "ring_capacity", 1, 1 << 20, u32_max, &[]),
        simulate_knob(
            "--latency-sample",
            "latency_sample",
            1,
            1 << 20,
            u32_max,
            &[],
        ),
        simulate_knob("--intents", "intents", 1, 200_000_000, u64_max, &[]),
        // At its most, room for 2^26 orders in each of 64 shards is more memory than any
        // machine this runs on has.
        Knob {
            refused_at_max: Some("order_capacity"),
            ..simulate_knob(
                "--order-capacity",
                "order_capacity",
                0,
                1 << 26,
                u64_max,
                &["--scenario", "micro-shows", "--shards", "64"],
            )
        },
        Knob {
            refused_at_max: Some("viewers_max"),
            ..simulate_knob("--viewers", "viewers_max", 1, 1_000_000_000, u64_max, &[])
        },
        simulate_knob("--waitlist", "waitlist", 0, 10_000_000, u32_max, &[]),
        simulate_knob(
            "--draw-window-ms",
            "draw_window_ms",
            0,
            week_ms,
            u64_max,
            &["--policy", "opening-draw", "--speed", "1000"],
        ),
        simulate_knob(
            "--pay-delay-ms",
            "pay_delay_ms",
            0,
            week_ms,
            u64_max,
            &["--pay-rate", "0.5", "--speed", "1000"],
        ),
        simulate_knob(
            "--hold-ms",
            "hold_ms",
            1,
            week_ms,
            u64_max,
            &["--speed", "1000"],
        ),
        simulate_knob(
            "--close-after-ms",
            "close_after_ms",
            1,
            week_ms,
            u64_max,
            &["--waitlist", "5", "--speed", "1000"],
        ),
        Knob {
            subcommand: "hiccups",
            flag: "--threads",
            field: "threads",
            min: 1,
            max: cpus,
            type_max: u32_max,
            extra: &["--seconds", "0.05"],
            refused_at_max: None,
            run_in_range: true,
        },
        Knob {
            subcommand: "fsync",
            flag: "--bytes",
            field: "bytes",
            min: 1,
            max: 64 << 20,
            type_max: u64_max,
            extra: &["--count", "1", "--dir", env!("CARGO_TARGET_TMPDIR")],
            refused_at_max: None,
            run_in_range: true,
        },
        // 100,000 fdatasyncs at the maximum would take minutes: checked out of range only.
        Knob {
            subcommand: "fsync",
            flag: "--count",
            field: "count",
            min: 1,
            max: 100_000,
            type_max: u32_max,
            extra: &["--dir", env!("CARGO_TARGET_TMPDIR")],
            refused_at_max: None,
            run_in_range: false,
        },
        Knob {
            subcommand: "compare",
            flag: "--redis-connections",
            field: "redis-connections",
            min: 1,
            max: 1_024,
            type_max: u32_max,
            extra: &[],
            refused_at_max: None,
            run_in_range: false,
        },
        Knob {
            subcommand: "compare",
            flag: "--redis-pipeline",
            field: "redis-pipeline",
            min: 1,
            max: 65_536,
            type_max: u32_max,
            extra: &[],
            refused_at_max: None,
            run_in_range: false,
        },
    ];
    for knob in &knobs {
        let mut values = vec![0, 1, knob.max, knob.max.saturating_add(1), knob.type_max];
        values.dedup();
        for value in values {
            let text = value.to_string();
            let in_range = (knob.min..=knob.max).contains(&value);
            let expected = match (in_range, value == knob.max) {
                (true, true) => knob.refused_at_max.map(|field| field.to_string()),
                (true, false) => None,
                (false, _) => Some(knob.field.to_string()),
            };
            if expected.is_none() && !knob.run_in_range && knob.subcommand != "simulate" {
                continue;
            }
            let mut args: Vec<&str> = vec![knob.flag, &text];
            args.extend(knob.extra);
            if knob.subcommand == "simulate" {
                args.extend(["--quiet", "--estimate"]);
            }
            let output = flashsale(knob.subcommand, &args);
            let message = stderr_line(&output);
            match expected {
                None => assert!(
                    output.status.success(),
                    "{} {args:?} is in range: {message}",
                    knob.subcommand
                ),
                Some(field) => {
                    assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
                    assert_eq!(message.lines().count(), 1, "{args:?}: {message}");
                    let named = message
                        .strip_prefix("error: ")
                        .is_some_and(|rest| rest.starts_with(&field));
                    assert!(named, "{args:?} names {field}: {message}");
                }
            }
        }
    }
}

/// Run and memory estimates name the knob that makes them too large.
#[test]
fn runs_too_long_or_too_large_are_refused_before_they_start() {
    for (args, field) in [
        (vec!["--rate", "1e-9", "--intents", "10"], "rate"),
        (vec!["--speed", "1e-300"], "speed"),
        // Past the schedule's nanosecond resolution.
        (vec!["--speed", "1e300"], "speed"),
        (vec!["--rate", "5000M"], "rate"),
    ] {
        let output = simulate(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let message = stderr_line(&output);
        assert!(
            message.starts_with(&format!("error: {field}:")),
            "{message}"
        );
    }
    let dir = std::env::temp_dir().join(format!("flashsale-knobs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (body, field) in [
        (
            "variants_per_product = 4294967295\nstock_per_product = 4294967295\n",
            "variants_per_product",
        ),
        ("countdown_ms = 18446744073709551615\n", "countdown_ms"),
        (
            "policy = \"opening-draw\"\ndraw_window_ms = 18446744073709551615\n",
            "draw_window_ms",
        ),
        (
            "wave_interval_ms = 604800000\nproducts_per_seller = 10\n",
            "wave_interval_ms",
        ),
    ] {
        let file = dir.join("knob.toml");
        std::fs::write(&file, body).unwrap();
        let output = simulate(&["--file", file.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{body}");
        let message = stderr_line(&output);
        assert!(
            message.starts_with(&format!("error: {field}:")),
            "{body}: {message}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Flags that cannot apply together are refused (exit 2) rather than silently ignored.
#[test]
fn flags_that_would_be_ignored_are_refused() {
    for args in [
        vec!["--rates", "1M", "--plot", "sweep.svg"],
        vec!["--rates", "1M", "--journal", "/tmp/flashsale-never"],
        vec!["--rates", "1M", "--mode", "closed"],
        vec!["--rates", "1M", "--rate", "2M"],
        vec!["--journal", "/tmp/flashsale-never", "--plot", "run.svg"],
        vec!["--plot", "run.png"],
    ] {
        let output = simulate(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
    let output = compare(&["--skip", "engine,mutex,crossbeam"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr_line(&output).starts_with("error: skip:"));
}

/// A journaled run whose disk fills up names the failed shard and why in its report (the
/// journal file and the system's error) and exits 1, rather than only reading as violated
/// invariants. The disk is a 20 KiB tmpfs the test mounts (it needs root on Linux;
/// skipped otherwise).
#[test]
fn a_journaled_run_on_a_full_disk_says_which_shard_failed_and_why() {
    let dir = std::env::temp_dir().join(format!("flashsale-sim-full-{}", std::process::id()));
    let Some(disk) = common::SmallDisk::mount(&dir, "20k") else {
        println!("skipped: cannot mount a small tmpfs here (needs root on Linux)");
        return;
    };
    let journal = dir.join("journal");
    let output = simulate(
        &[
            &SMALL[..],
            &["--json", "--journal", journal.to_str().unwrap()],
        ]
        .concat(),
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr_line(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["in_memory"]["failed_shards"], serde_json::json!([]));
    let failed = report["journaled"]["failed_shards"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let why = failed[0].as_str().unwrap();
    assert!(
        why.starts_with("shard 0: its journal could not be written")
            && why.contains("No space left on device"),
        "{why}"
    );
    drop(disk);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plot or a journal directory that cannot be written, or a rate of a sweep out of
/// range, is refused before any run, not after one: the only line on standard error is
/// the refusal (a run would first note its shard's small room for orders), and nothing
/// is printed as a report.
#[test]
fn an_output_that_cannot_be_written_is_refused_before_the_run() {
    let dir = std::env::temp_dir().join(format!("flashsale-unwritable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let under_file = file.join("below");
    let plot = under_file.join("run.svg");
    for (args, field) in [
        (vec!["--plot", plot.to_str().unwrap()], "plot"),
        (vec!["--journal", under_file.to_str().unwrap()], "journal"),
        (vec!["--journal", file.to_str().unwrap()], "journal"),
        // A sweep whose last rate is out of range runs none of its rates.
        (vec!["--rates", "1M,2000M"], "rate"),
    ] {
        let output = simulate(&[&SMALL[..], &["--order-capacity", "8"], &args].concat());
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let message = stderr_line(&output);
        assert!(
            message.starts_with(&format!("error: {field}:")) && !message.contains('\n'),
            "{args:?}: {message}"
        );
        assert!(output.stdout.is_empty(), "{args:?}");
    }
    // A plot path that can be written is left as it was found when the check passes: a
    // missing file is not made by the check (the plot makes it after the run).
    let fine = dir.join("fine.svg");
    let output = simulate(&[&SMALL[..], &["--plot", fine.to_str().unwrap()]].concat());
    assert!(output.status.success(), "{}", stderr_line(&output));
    assert!(std::fs::read_to_string(&fine).unwrap().starts_with("<svg"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The plot (SVG) names the scenario, seed and loop, says where latency is measured from,
/// splits confirmed from rejected outcomes and marks the opening and the sell-outs; a
/// closed-loop plot measures from the submit and its time axis ends with the run.
#[test]
fn the_plot_says_what_it_shows() {
    let dir = std::env::temp_dir().join(format!("flashsale-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let open = dir.join("open.svg");
    let mut args = SMALL.to_vec();
    args.extend(["--plot", open.to_str().unwrap()]);
    let output = simulate(&args);
    assert!(output.status.success(), "{}", stderr_line(&output));
    let svg = std::fs::read_to_string(&open).unwrap();
    for text in [
        "sneaker-drop (seed 42, open loop)",
        "from intended send",
        "confirmed",
        "rejected",
        "sale opens",
        "a SKU sells out (12)",
    ] {
        assert!(svg.contains(text), "the open-loop plot lacks {text:?}");
    }
    assert!(
        !svg.contains("100000.0"),
        "axis labels are written for people"
    );
    let closed = dir.join("closed.svg");
    let mut args = SMALL.to_vec();
    args.extend(["--mode", "closed", "--plot", closed.to_str().unwrap()]);
    let output = simulate(&args);
    assert!(output.status.success(), "{}", stderr_line(&output));
    let svg = std::fs::read_to_string(&closed).unwrap();
    assert!(svg.contains("closed loop") && svg.contains("from submit"));
    assert!(!svg.contains("intended send"));
    // 20,000 presses in a closed loop end within a second: the axis is in ms, not the
    // schedule's seconds.
    let labels: Vec<&str> = svg.lines().map(str::trim).collect();
    assert!(
        labels.contains(&"0 ms") && !labels.contains(&"4 s"),
        "time axis scaled to the run"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--version` names the protocol of the build's cluster messages (every node and gateway
/// of a sale must share it), on the binary and on its subcommands.
#[test]
fn the_version_names_the_cluster_protocol() {
    let protocol = format!("(cluster protocol {})", flashsale::cluster::PROTOCOL);
    let mut asked = vec![&["--version"][..], &["simulate", "--version"]];
    if cfg!(feature = "cluster") {
        asked.push(&["node", "--version"]);
    }
    for args in asked {
        let output = Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(args)
            .output()
            .expect("the binary runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{args:?}: {stdout}");
        assert!(
            stdout.contains(env!("CARGO_PKG_VERSION")) && stdout.contains(&protocol),
            "{args:?}: {stdout}"
        );
    }
}
