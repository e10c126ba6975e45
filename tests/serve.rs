//! `flashsale serve` as a shop runs it: the real binary on a free port of 127.0.0.1,
//! driven over real HTTP with reqwest (and raw TCP for slow clients). Every route and
//! status, slow and malformed clients, SIGTERM while clients hang on, SIGKILL under load
//! with every answered order intact after the restart, a data directory of another sale
//! refused, buyer tokens, rate limits, and the event feed resuming across a restart.
#![cfg(not(loom))]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;
mod peers;

/// A `flashsale serve` process, killed when dropped.
struct Serve {
    child: Child,
    base: String,
    addr: String,
    /// Its standard error, line by line, after "ready".
    lines: mpsc::Receiver<String>,
    /// The line that said it was ready.
    ready: String,
    /// What it said before that line.
    said_before_ready: Vec<String>,
}

/// `flashsale serve --addr 127.0.0.1:0 <args>` with `env` set, and no forward proxy from
/// the environment the tests run in.
fn serve_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flashsale"));
    command.args(["serve", "--addr", "127.0.0.1:0"]).args(args);
    for name in ["HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command
}

/// Starts `flashsale serve --addr 127.0.0.1:0 <args>` and waits until it is ready.
fn serve(args: &[&str]) -> Serve {
    serve_with_env(args, &[])
}

/// [`serve`] with `env` set.
fn serve_with_env(args: &[&str], env: &[(&str, &str)]) -> Serve {
    let mut child = serve_command(args, env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flashsale serve starts");
    let stderr = child.stderr.take().unwrap();
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    let mut addr = None;
    let mut said_before_ready = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("serve {args:?} did not get ready")
            });
        if let Some(rest) = line.split("listening on http://").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_owned);
        }
        if line.contains("ready:") {
            break line;
        }
        said_before_ready.push(line);
    };
    let addr = addr.expect("the listening address is printed");
    Serve {
        child,
        base: format!("http://{addr}"),
        addr,
        lines,
        ready,
        said_before_ready,
    }
}

/// Runs `flashsale serve <args>`, which must fail: its exit code and standard error.
fn serve_fails(args: &[&str]) -> (i32, String) {
    serve_fails_with_env(args, &[])
}

/// [`serve_fails`] with `env` set.
fn serve_fails_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = serve_command(args, env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

impl Serve {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then waits (up to `limit`) for the exit; its status and the rest of its
    /// standard error.
    fn terminate(mut self, limit: Duration) -> (ExitStatus, String) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped (wait not called).
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let rest: Vec<String> = self.lines.try_iter().collect();
                return (status, rest.join("\n"));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let said: Vec<String> = self.lines.try_iter().collect();
                panic!(
                    "serve did not exit within {limit:?} of SIGTERM; after \"ready\" it said:\n{}",
                    said.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGHUP, then waits (up to a minute) for a line of standard error that says `said`.
    fn hang_up_until(&self, said: &str) -> String {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped (wait not called).
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGHUP);
        }
        self.said(said)
    }

    /// Waits (up to a minute) for a line of standard error that says `said`.
    fn said(&self, said: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no line saying {said:?}"));
            if line.contains(said) {
                return line;
            }
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flashsale-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_catalog(dir: &Path, text: &str) -> String {
    let path = dir.join("sale.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `serve`'s arguments for a sale of `catalog` journaled unsynced in `data`, with the
/// operator token `tok`, and `more`.
fn unsynced_with_operator<'a>(data: &'a str, catalog: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--data",
        data,
        "--no-sync",
        "--catalog",
        catalog,
        "--admin-token",
        "operator-token-16",
    ];
    args.extend_from_slice(more);
    args
}

/// A scratch directory `name`, the path of a data directory in it (not made yet) and the
/// path of `catalog` written in it.
fn scratch_sale(name: &str, catalog: &str) -> (PathBuf, String, String) {
    let dir = scratch(name);
    let data = dir.join("data").display().to_string();
    let catalog = write_catalog(&dir, catalog);
    (dir, data, catalog)
}

const TEST_SALE: &str = r#"
[[sku]]
id = 1
product = "Trainer"
variant = "42"
stock = 3
limit = 2

[[sku]]
id = 2
stock = 10
opens = "+1h"

[[sku]]
id = 3
stock = 5
limit = 5
hold = "150ms"
"#;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Status and JSON body.
/// The body of `GET url`, as text.
async fn text_of(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("a {status} answer that is not JSON: {text:?}"));
    (status, body)
}

async fn buy(http: &reqwest::Client, serve: &Serve, sku: &str, body: Value) -> (StatusCode, Value) {
    call(
        http.post(serve.url(&format!("/sales/{sku}/buy")))
            .json(&body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_and_every_error_is_json_with_a_reason() {
    let dir = scratch("routes");
    let catalog = write_catalog(&dir, TEST_SALE);
    let server = serve(&[
        "--in-memory",
        "--catalog",
        &catalog,
        "--admin-token",
        "operator-token-16",
    ]);
    let http = client();
    let admin = |path: &str| http.post(server.url(path)).bearer_auth("operator-token-16");

    let (status, first) = buy(&http, &server, "1", json!({"user": 7, "qty": 1, "key": 1})).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["state"], "held");
    let order = first["order"].as_u64().unwrap();
    let (status, again) = buy(&http, &server, "1", json!({"user": 7, "qty": 1, "key": 1})).await;
    assert_eq!(
        (status, &again["reason"], &again["order"]),
        (StatusCode::CONFLICT, &json!("duplicate"), &json!(order))
    );
    let (status, over) = buy(&http, &server, "1", json!({"user": 7, "qty": 2, "key": 2})).await;
    assert_eq!(
        (status, over["reason"].as_str()),
        (StatusCode::CONFLICT, Some("user_limit"))
    );
    assert_eq!(
        buy(&http, &server, "1", json!({"user": 8, "qty": 2, "key": 1}))
            .await
            .0,
        StatusCode::OK
    );
    let (status, sold) = buy(&http, &server, "1", json!({"user": 9, "qty": 1, "key": 1})).await;
    assert_eq!(
        (status, sold["reason"].as_str()),
        (StatusCode::CONFLICT, Some("sold_out"))
    );
    let (status, early) = buy(&http, &server, "2", json!({"user": 9, "qty": 1, "key": 1})).await;
    assert_eq!(
        (status, early["reason"].as_str()),
        (StatusCode::TOO_EARLY, Some("not_open_yet"))
    );
    assert!(early["opens_in_ms"].as_u64().unwrap() > 3_000_000);
    let (status, unknown) = buy(&http, &server, "9", json!({"user": 9, "qty": 1, "key": 1})).await;
    assert_eq!(
        (status, unknown["reason"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_sku"))
    );
    let (status, zero) = buy(&http, &server, "3", json!({"user": 9, "qty": 0, "key": 1})).await;
    assert_eq!(
        (status, zero["reason"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_quantity"))
    );

    // Malformed requests: 400 naming the field.
    for (sku, body, field) in [
        ("+1", r#"{"user":1,"qty":1,"key":1}"#, "sku"),
        ("01", r#"{"user":1,"qty":1,"key":1}"#, "sku"),
        ("4294967296", r#"{"user":1,"qty":1,"key":1}"#, "sku"),
        ("1", r#"{"user":14,"user":15,"qty":1,"key":1}"#, "user"),
        ("1", r#"{"user":1,"qty":1,"key":1,"price":0}"#, "price"),
        ("1", r#"{"user":1,"qty":"1","key":1}"#, "qty"),
        ("1", r#"{"user":1,"key":1}"#, "qty"),
        ("1", r#"{"qty":1,"key":1}"#, "user"),
        ("1", r#"{"user":1,"qty":1,"key":1} {}"#, "body"),
        ("1", r#"[1,2]"#, "body"),
        // Every field by position: serde would read it, the API does not.
        ("1", r#" [1,1,1,false]"#, "body"),
        (
            "18446744073709551616",
            r#"{"user":1,"qty":1,"key":1}"#,
            "sku",
        ),
        ("1", r#"not json"#, "body"),
    ] {
        let (status, answer) = call(
            http.post(server.url(&format!("/sales/{sku}/buy")))
                .body(body),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sku} {body}: {answer}");
        assert_eq!(
            (answer["reason"].as_str(), answer["field"].as_str()),
            (Some("bad_request"), Some(field)),
            "{sku} {body}: {answer}"
        );
    }
    let (status, large) = call(
        http.post(server.url("/sales/1/buy"))
            .body(vec![b' '; 8_192]),
    )
    .await;
    assert_eq!(
        (status, large["reason"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
    );
    let (status, missing) = call(http.get(server.url("/nowhere"))).await;
    assert_eq!(
        (status, missing["reason"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, wrong) = call(http.delete(server.url("/sales/1"))).await;
    assert_eq!(
        (status, wrong["reason"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );

    // Sales.
    let (status, sales) = call(http.get(server.url("/sales"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sales["next"], Value::Null, "the catalog fits one page");
    let sales = sales["sales"].as_array().unwrap();
    assert_eq!(sales.len(), 3);
    assert_eq!(
        (
            sales[0]["state"].as_str(),
            sales[0]["held"].as_u64(),
            sales[0]["available"].as_u64()
        ),
        (Some("sold_out"), Some(3), Some(0))
    );
    assert_eq!(sales[1]["state"], "upcoming");
    // A limit, and none (null, as a window that never closes).
    assert_eq!(
        (&sales[0]["limit_per_buyer"], &sales[1]["limit_per_buyer"]),
        (&json!(2), &Value::Null)
    );
    assert_eq!(sales[1]["closes_at"], Value::Null);
    // Pages in catalog order: `next` names the SKU to ask after, until the last page.
    let ids = peers::page_skus;
    for (query, skus, next) in [
        ("limit=2", vec![1, 2], json!(2)),
        ("after=2&limit=2", vec![3], Value::Null),
        ("after=1", vec![2, 3], Value::Null),
        ("after=3", vec![], Value::Null),
        ("after=1&limit=0", vec![2], json!(2)),
    ] {
        let (status, page) = call(http.get(server.url(&format!("/sales?{query}")))).await;
        assert_eq!(status, StatusCode::OK, "{query}: {page}");
        assert_eq!(
            (ids(&page), &page["next"]),
            (skus, &next),
            "{query}: {page}"
        );
    }
    for (query, field) in [
        ("after=99", "after"),
        ("after=x", "after"),
        ("limit=-1", "limit"),
        ("page=2", "page"),
    ] {
        let (status, refused) = call(http.get(server.url(&format!("/sales?{query}")))).await;
        assert_eq!(
            (
                status,
                refused["reason"].as_str(),
                refused["field"].as_str()
            ),
            (StatusCode::BAD_REQUEST, Some("bad_request"), Some(field)),
            "{query}: {refused}"
        );
    }
    let (status, refused) = call(
        http.get(server.url("/orders/events?limit=x"))
            .bearer_auth("operator-token-16"),
    )
    .await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("limit")),
        "{refused}"
    );
    let (status, one) = call(http.get(server.url("/sales/3"))).await;
    assert_eq!(
        (status, one["state"].as_str(), one["stock"].as_u64()),
        (StatusCode::OK, Some("open"), Some(5))
    );

    // An order's life.
    let (status, view) = call(http.get(server.url(&format!("/orders/{order}")))).await;
    assert_eq!(
        (status, view["state"].as_str(), view["user"].as_u64()),
        (StatusCode::OK, Some("held"), Some(7))
    );
    let (status, paid) = call(http.post(server.url(&format!("/orders/{order}/pay")))).await;
    assert_eq!(
        (status, paid["state"].as_str()),
        (StatusCode::OK, Some("paid"))
    );
    let (status, twice) = call(http.post(server.url(&format!("/orders/{order}/pay")))).await;
    assert_eq!(
        (status, twice["reason"].as_str()),
        (StatusCode::CONFLICT, Some("already_paid"))
    );
    let (status, none) = call(http.get(server.url("/orders/12345"))).await;
    assert_eq!(
        (status, none["reason"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_order"))
    );
    let (status, _) = call(http.get(server.url("/orders/007"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, held) = buy(&http, &server, "3", json!({"user": 9, "qty": 2, "key": 1})).await;
    let expiring = held["order"].as_u64().unwrap();
    let (_, to_cancel) = buy(&http, &server, "3", json!({"user": 10, "qty": 1, "key": 1})).await;
    let to_cancel = to_cancel["order"].as_u64().unwrap();
    let (status, cancelled) =
        call(http.post(server.url(&format!("/orders/{to_cancel}/cancel")))).await;
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let (status, late) = call(http.post(server.url(&format!("/orders/{to_cancel}/pay")))).await;
    assert_eq!(
        (status, late["reason"].as_str()),
        (StatusCode::CONFLICT, Some("cancelled"))
    );
    // The hold is 150 ms: the order expires unpaid, by the engine's own tick.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, view) = call(http.get(server.url(&format!("/orders/{expiring}")))).await;
        if view["state"] == "expired" {
            break;
        }
        assert_eq!(view["state"], "held");
        assert!(Instant::now() < deadline, "the hold never expired: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, expired) = call(http.post(server.url(&format!("/orders/{expiring}/pay")))).await;
    assert_eq!(
        (status, expired["reason"].as_str()),
        (StatusCode::CONFLICT, Some("hold_expired"))
    );

    // Operators.
    let (status, no_token) = call(
        http.post(server.url("/admin/sales/1/restock"))
            .json(&json!({"units": 2})),
    )
    .await;
    assert_eq!(
        (status, no_token["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let (status, bad_token) = call(
        http.post(server.url("/admin/sales/1/restock"))
            .bearer_auth("tok2")
            .json(&json!({"units": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad_token}");
    let (status, restocked) =
        call(admin("/admin/sales/1/restock").json(&json!({"units": 2}))).await;
    assert_eq!(
        (
            status,
            restocked["available"].as_u64(),
            restocked["stock"].as_u64()
        ),
        (StatusCode::OK, Some(2), Some(5))
    );
    let (status, too_many) = call(admin("/admin/sales/1/reduce").json(&json!({"units": 3}))).await;
    assert_eq!(
        (
            status,
            too_many["reason"].as_str(),
            too_many["available"].as_u64()
        ),
        (StatusCode::CONFLICT, Some("not_enough_available"), Some(2))
    );
    let (status, closed) = call(admin("/admin/sales/1/close")).await;
    assert_eq!(
        (status, closed["state"].as_str()),
        (StatusCode::OK, Some("closed"))
    );
    let (status, refused) = buy(&http, &server, "1", json!({"user": 11, "qty": 1, "key": 1})).await;
    assert_eq!(
        (status, refused["reason"].as_str()),
        (StatusCode::FORBIDDEN, Some("closed"))
    );
    let (status, reopened) = call(admin("/admin/sales/1/reopen")).await;
    assert_eq!(
        (status, reopened["state"].as_str()),
        (StatusCode::OK, Some("open")),
        "{reopened}"
    );
    assert_eq!(
        buy(&http, &server, "1", json!({"user": 11, "qty": 1, "key": 1}))
            .await
            .0,
        StatusCode::OK
    );
    let (status, moved) = call(admin("/admin/sales/2/window").json(&json!({"opens": "+0s"}))).await;
    assert_eq!(
        (status, moved["state"].as_str()),
        (StatusCode::OK, Some("open")),
        "{moved}"
    );
    let (status, inverted) =
        call(admin("/admin/sales/2/window").json(&json!({"opens": "+2h", "closes": "+1h"}))).await;
    assert_eq!(
        (status, inverted["reason"].as_str()),
        (StatusCode::CONFLICT, Some("window_inverted"))
    );
    let (status, nonsense) =
        call(admin("/admin/sales/2/window").json(&json!({"opens": "soon"}))).await;
    assert_eq!(
        (status, nonsense["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("opens"))
    );
    let (status, _) = call(admin("/admin/sales/2/explode")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Health and metrics.
    let (status, up) = call(http.get(server.url("/healthz"))).await;
    assert_eq!(
        (status, up["status"].as_str()),
        (StatusCode::OK, Some("up"))
    );
    let (status, ready) = call(http.get(server.url("/readyz"))).await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    let metrics = text_of(&http, &server.url("/metrics")).await;
    for line in [
        r#"flashsale_http_answers_total{status="409",reason="sold_out"} 1"#,
        r#"flashsale_http_answers_total{status="404",reason="not_found"} 2"#,
        r#"flashsale_http_answers_total{status="405",reason="method_not_allowed"} 1"#,
        r#"flashsale_http_answers_total{status="413",reason="body_too_large"} 1"#,
        r#"flashsale_http_answers_total{status="400",reason="bad_request"} 20"#,
        r#"flashsale_sku_available{sku="1"} 1"#,
        r#"flashsale_shard_failed{shard="0"} 0"#,
        r#"flashsale_snapshots_failed_total{shard="0"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    let (status, report) = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads from `stream` until it closes (or `limit` passes, which fails): what came.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => got.extend_from_slice(&buffer[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(error) => panic!(
                "the server kept a slow client's connection open: {error}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn slow_clients_time_out_and_cannot_hold_shutdown() {
    let server = serve(&[
        "--in-memory",
        "--header-timeout",
        "1s",
        "--body-timeout",
        "1s",
        "--shutdown-grace",
        "2s",
    ]);
    // Half the headers, then nothing: closed at the header timeout.
    let mut partial = TcpStream::connect(&server.addr).unwrap();
    partial
        .write_all(b"POST /sales/1/buy HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    read_until_closed(&mut partial, Duration::from_secs(20));
    // A body shorter than its Content-Length: 408 at the body timeout, then closed.
    let mut short = TcpStream::connect(&server.addr).unwrap();
    short
        .write_all(
            b"POST /sales/1/buy HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"user\":1",
        )
        .unwrap();
    let answer = read_until_closed(&mut short, Duration::from_secs(20));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(&server.addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answer = read_until_closed(&mut idle, Duration::from_secs(20));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // SIGTERM while clients hang on, mid-headers and mid-body: the server exits anyway.
    let mut hanging = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(&server.addr).unwrap();
        stream
            .write_all(b"POST /sales/1/buy HTTP/1.1\r\nHost: x\r\nContent-Le")
            .unwrap();
        hanging.push(stream);
        let mut stream = TcpStream::connect(&server.addr).unwrap();
        stream
            .write_all(b"POST /sales/1/buy HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
            .unwrap();
        hanging.push(stream);
    }
    std::thread::sleep(Duration::from_millis(200));
    let (status, rest) = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "{rest}");
    assert!(
        rest.contains("confirmed orders"),
        "the engine's report is printed: {rest}"
    );
    drop(hanging);
}

/// A server whose standard error is read by nobody any more (a log shipper that died, a
/// `| head`) keeps serving and stops cleanly: its log lines are lost, not its sale. It
/// logs a line on SIGHUP, and its stop logs the engine's report and writes the order
/// feed's checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_standard_error_neither_stops_the_server_nor_its_clean_stop() {
    let (dir, data, catalog) = scratch_sale("stderr", "[[sku]]\nid = 1\nstock = 10\nlimit = 1\n");
    let mut child = serve_command(&unsynced_with_operator(&data, &catalog, &[]), &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flashsale serve starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // Killed if the test fails before it exits.
    struct Reaped(Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reaped(child);
    let mut addr = None;
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("ready:") {
        if let Some(rest) = line.split("listening on http://").nth(1) {
            addr = rest.split_whitespace().next().map(str::to_owned);
        }
        line.clear();
    }
    assert!(line.contains("ready:"), "serve did not get ready");
    let base = format!("http://{}", addr.expect("the listening address is printed"));
    // The reader goes away: every later write to standard error fails with EPIPE.
    drop(stderr);
    let http = client();
    let buy = |user: u64| {
        call(
            http.post(format!("{base}/sales/1/buy"))
                .json(&json!({"user": user, "qty": 1, "key": 1})),
        )
    };
    assert_eq!(buy(1).await.0, StatusCode::OK);
    // SIGHUP: the server logs that it has no token keys to read again.
    // SAFETY: kill(2) on our own child's pid; it has not been reaped (wait not called).
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGHUP);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        buy(2).await.0,
        StatusCode::OK,
        "still serving after a log line"
    );
    // SAFETY: as above.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "a clean stop: {status}");
    assert!(
        dir.join("data/feed.checkpoint").is_file(),
        "the clean stop wrote the order feed's checkpoint"
    );
    // And the next start takes the feed from it, with both orders.
    let server = serve(&unsynced_with_operator(&data, &catalog, &[]));
    let (status, page) = call(
        http.get(server.url("/orders/events?limit=10&wait_ms=0"))
            .bearer_auth("operator-token-16"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["events"].as_array().unwrap().len(), 2, "{page}");
    assert!(
        server
            .said_before_ready
            .iter()
            .any(|line| line.contains("checkpoint"))
            || server.ready.contains("checkpoint"),
        "the feed is read from its checkpoint: {:?} {}",
        server.said_before_ready,
        server.ready
    );
}

/// A shard whose journal's disk fills up fails closed: 503 `shard_failed` from then on,
/// no confirmation after the first refusal, and serve says at once which shard failed and
/// why, naming the journal file and the system's error (buyers see only the 503), and
/// exits 1 when stopped. Once the disk has room again, a restart recovers every order that
/// was confirmed. The disk is a 20 KiB tmpfs the test mounts (it needs root on Linux;
/// skipped otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_its_shard_closed_and_serve_says_why() {
    let (dir, _, catalog) =
        scratch_sale("full-disk", "[[sku]]\nid = 1\nstock = 100000\nlimit = 1\n");
    let disk = dir.join("disk");
    let Some(small) = common::SmallDisk::mount(&disk, "20k") else {
        println!("skipped: cannot mount a small tmpfs here (needs root on Linux)");
        return;
    };
    let data = disk.join("data").display().to_string();
    let args = ["--data", &data, "--catalog", &catalog];
    let server = serve(&args);
    let http = client();
    let mut confirmed = 0u64;
    let mut refused = false;
    for user in 1..=20_000u64 {
        let (status, body) = buy(
            &http,
            &server,
            "1",
            json!({"user": user, "qty": 1, "key": 1}),
        )
        .await;
        match status {
            StatusCode::OK => confirmed += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["reason"], "shard_failed", "{body}");
                refused = true;
                break;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(refused, "the disk never filled ({confirmed} confirmed)");
    // Failed for good: no later buy is confirmed.
    let (status, _) = buy(&http, &server, "1", json!({"user": 0, "qty": 1, "key": 1})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let metrics = text_of(&http, &server.url("/metrics")).await;
    assert!(
        metrics.contains(r#"flashsale_shard_failed{shard="0"} 1"#),
        "{metrics}"
    );
    let (status, ready) = call(http.get(server.url("/readyz"))).await;
    assert_eq!(
        (status, ready["reason"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("shard_failed")),
        "{ready}"
    );
    let said = server.said("shard 0 FAILED");
    assert!(
        said.contains("its journal could not be written")
            && said.contains("shard-00000.fsj")
            && said.contains("No space left on device"),
        "{said}"
    );
    // It stops as asked, but with exit 1: a supervisor sees the failure without the log.
    let (status, rest) = server.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(
        rest.contains("FAILED shard 0: its journal could not be written")
            && rest.contains("stopped with 1 failed shard(s) (0)"),
        "{rest}"
    );
    // Room again: a restart recovers every confirmed order, and nothing more.
    small.resize("1m");
    let again = serve(&args);
    let (status, sales) = call(http.get(again.url("/sales"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sales["sales"][0]["held"], confirmed, "{sales}");
    again.kill();
    drop(small);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A sale of many SKUs is read a page at a time: `GET /sales` pages through every SKU in
/// catalog order over two shards, and the live page's snapshot shows the first 200 and
/// says how many there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_of_many_skus_is_read_a_page_at_a_time() {
    let dir = scratch("many-skus");
    // Ids in descending order: catalog order is not id order.
    let text: String = (1..=1_250u32)
        .rev()
        .map(|id| format!("[[sku]]\nid = {id}\nstock = {}\n\n", 1 + id % 5))
        .collect();
    let catalog = write_catalog(&dir, &text);
    let server = serve(&["--in-memory", "--catalog", &catalog, "--shards", "2"]);
    let http = client();
    let (status, _) = call(http.get(server.url("/readyz"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, bought) = buy(
        &http,
        &server,
        "700",
        json!({"user": 1, "qty": 1, "key": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{bought}");
    let mut read = Vec::new();
    let mut pages = 0;
    let mut after = String::new();
    loop {
        let (status, page) = call(http.get(server.url(&format!("/sales?limit=300{after}")))).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        for sale in page["sales"].as_array().unwrap() {
            read.push((
                sale["sku"].as_u64().unwrap(),
                sale["sold"].as_u64().unwrap() + sale["held"].as_u64().unwrap(),
            ));
        }
        match page["next"].as_u64() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    let ids: Vec<u64> = read.iter().map(|&(sku, _)| sku).collect();
    assert_eq!(ids, (1..=1_250u64).rev().collect::<Vec<_>>());
    let taken: Vec<u64> = read
        .iter()
        .filter(|&&(_, taken)| taken > 0)
        .map(|&(sku, _)| sku)
        .collect();
    assert_eq!(taken, [700]);
    let (status, first) = call(http.get(server.url("/sales"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (first["sales"].as_array().unwrap().len(), &first["next"]),
        (1_000, &json!(251)),
        "a page of 1,000 unless asked"
    );
    let stream = http
        .get(server.url("/events?limit=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let text = stream.text().await.unwrap();
    let snapshot: Value = serde_json::from_str(
        text.lines()
            .find_map(|line| line.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("a snapshot in {text}")),
    )
    .unwrap();
    let shown = snapshot["skus"].as_array().unwrap();
    assert_eq!(
        (shown.len(), &snapshot["skus_total"], &shown[0]["sku"]),
        (200, &json!(1_250), &json!(1_250)),
        "{snapshot}"
    );
    // Pages opened at once share snapshots (each read of the shards is sent to every page
    // asking within a quarter second): forty pages do not make forty.
    let opened: Vec<_> = (0..40)
        .map(|_| {
            let request = http.get(server.url("/events?limit=1"));
            tokio::spawn(async move { request.send().await.unwrap().text().await.unwrap() })
        })
        .collect();
    let mut taken = std::collections::BTreeSet::new();
    for page in opened {
        let text = page.await.unwrap();
        let data = text
            .lines()
            .find_map(|line| line.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("a snapshot in {text}"));
        let snapshot: Value = serde_json::from_str(data).unwrap();
        taken.insert(snapshot["at_ms"].to_string());
    }
    assert!(taken.len() < 40, "{} snapshots for 40 pages", taken.len());
    let (status, report) = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A data directory on a filesystem in memory is named as such at the start: its journal
/// survives a restart of the process, not of the machine.
#[test]
fn a_data_directory_in_memory_is_noted_at_the_start() {
    if !common::dev_shm_is_tmpfs() {
        println!("skipped: /dev/shm is not a tmpfs mount here");
        return;
    }
    let data = PathBuf::from(format!("/dev/shm/flashsale-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let server = serve(&["--data", data.to_str().unwrap()]);
    assert!(
        server
            .said_before_ready
            .iter()
            .any(|line| line.contains("on tmpfs, in memory")),
        "{:?}",
        server.said_before_ready
    );
    let (status, _) = server.terminate(Duration::from_secs(30));
    assert!(status.success());
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
fn start_up_errors_are_one_line_and_exit_2() {
    let dir = scratch("startup");
    let bad = write_catalog(&dir, "[[sku]]\nid = 1\nstok = 5\n");
    let (code, stderr) = serve_fails(&["--in-memory", "--catalog", &bad]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("sale.toml: line 3: sku[0]: unknown field `stok`"),
        "{stderr}"
    );
    let bad = write_catalog(
        &dir,
        "[[sku]]\nid = 1\nstock = 5\n[[sku]]\nid = 2\nstock = 1\nhold = \"soon\"\n",
    );
    let (code, stderr) = serve_fails(&["--in-memory", "--catalog", &bad]);
    assert_eq!(code, 2);
    assert!(stderr.contains("sku[1] (id 2): field `hold`"), "{stderr}");
    let bad = write_catalog(
        &dir,
        "[[sku]]\nid = 1\nstock = 5\n[[sku]]\nid = 1\nstock = 1\n",
    );
    let (code, stderr) = serve_fails(&["--in-memory", "--catalog", &bad]);
    assert_eq!(code, 2);
    assert!(stderr.contains("sku[1] (id 1): field `id`"), "{stderr}");
    // An entry as an array of its values, in the order the fields are declared: refused,
    // where an inline table of named fields is read.
    let bad = write_catalog(&dir, "sku = [[101, \"Stratos\", \"EU 42\", 600, 1]]\n");
    let (code, stderr) = serve_fails(&["--in-memory", "--catalog", &bad]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("sale.toml: line 1: invalid type: sequence, expected a table"),
        "{stderr}"
    );
    let bad = write_catalog(&dir, "pool_slice = 0\n[[sku]]\nid = 1\nstock = 5\n");
    let (code, stderr) = serve_fails(&["--in-memory", "--catalog", &bad]);
    assert_eq!(code, 2);
    assert!(stderr.contains("the file: field `pool_slice`"), "{stderr}");
    // Not a catalog file at all: a device that never ends, a directory.
    for not_a_file in ["/dev/zero", dir.to_str().unwrap()] {
        let (code, stderr) = serve_fails(&["--in-memory", "--catalog", not_a_file]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("not a file"), "{stderr}");
    }
    let (code, stderr) = serve_fails(&["--in-memory", "--threads", "0"]);
    assert_eq!(code, 2, "{stderr}");
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let (code, stderr) = serve_fails(&["--data", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("a-file: not a directory"), "{stderr}");
    // Demo mode (anyone buys as anyone) by default only on a loopback address: refused
    // before it listens anywhere else.
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let output = Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(["serve", "--in-memory", "--addr", addr])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "--addr {addr}: other machines could buy as any buyer"
            )) && stderr.contains("--auth demo to serve the demo there anyway"),
            "{stderr}"
        );
    }
    // Room for orders past any machine's memory (64 shards of 6 GiB): refused by name
    // before any of it is made, not written until the kernel kills the process.
    let many: String = (1..=64)
        .map(|id| format!("[[sku]]\nid = {id}\nstock = 10\n"))
        .collect();
    let many = write_catalog(&dir, &many);
    let room = [
        "--in-memory",
        "--catalog",
        &many,
        "--shards",
        "64",
        "--order-capacity",
        "67108864",
    ];
    let (code, stderr) = serve_fails(&room);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("the room for orders of 64 shard(s) needs 384.0 GiB")
            && stderr.contains("--order-capacity"),
        "{stderr}"
    );
    // Limits that would refuse every client.
    for (flag, value) in [
        ("--header-timeout", "0s"),
        ("--body-timeout", "0ms"),
        ("--body-limit", "0"),
        ("--body-limit", "255"),
    ] {
        let (code, stderr) = serve_fails(&["--in-memory", flag, value]);
        assert_eq!(code, 2, "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
    let (code, stderr) = serve_fails(&["--in-memory", "--order-capacity", "67108865"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--order-capacity"), "{stderr}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(["serve", "--in-memory", "--addr", &taken])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot listen on") && !stderr.contains("Os {"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every example catalog starts a sale today, whatever the date (a fixed drop date in an
/// example had made it refuse to start once the date passed); a window that closed before
/// the sale's first start is refused by name.
#[test]
fn the_example_catalogs_start_and_a_window_already_over_is_refused() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sales");
    let mut started = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            let server = serve(&["--in-memory", "--catalog", path.to_str().unwrap()]);
            assert!(server.ready.contains("ready:"), "{}", path.display());
            started += 1;
        }
    }
    assert!(started >= 3, "{started} example catalogs");
    let dir = scratch("window-over");
    for closes in ["2020-01-01T00:00:00Z", "+0s"] {
        let over = write_catalog(
            &dir,
            &format!("[[sku]]\nid = 1\nstock = 5\ncloses = \"{closes}\"\n"),
        );
        let (code, stderr) = serve_fails(&["--in-memory", "--catalog", &over]);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("field `closes`") && stderr.contains("not after the sale's start"),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `flashsale check` on a data directory: its exit code, standard output and error.
fn check(data: &str, catalog: &str, more: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args(["check", "--data", data, "--catalog", catalog])
        .args(more)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_data_directory_of_another_sale_is_refused() {
    let (dir, data, catalog) = scratch_sale(
        "mismatch",
        "[[sku]]\nid = 1\nstock = 5\n[[sku]]\nid = 2\nstock = 5\n",
    );
    let server = serve(&["--data", &data, "--catalog", &catalog]);
    // A second process on the same directory while the first serves from it.
    let (code, stderr) = serve_fails(&["--data", &data, "--catalog", &catalog]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("in use by another engine"), "{stderr}");
    let (_, stdout, _) = check(&data, &catalog, &[]);
    assert!(
        stdout.contains("an engine is serving from this directory now"),
        "{stdout}"
    );
    server.terminate(Duration::from_secs(30));
    let (_, stdout, _) = check(&data, &catalog, &[]);
    assert!(!stdout.contains("serving from this directory"), "{stdout}");
    // A snapshot a crash cut short: check names it, and the next start removes it.
    let cut_short = Path::new(&data).join("shard-00000-00000000000000000009.tmp");
    std::fs::write(&cut_short, [0u8; 100]).unwrap();
    let (_, stdout, _) = check(&data, &catalog, &[]);
    assert!(
        stdout.contains("shard-00000-00000000000000000009.tmp: a snapshot a crash cut short (100 bytes); a restart removes it"),
        "{stdout}"
    );
    assert!(cut_short.exists(), "check changes nothing");
    serve(&["--data", &data, "--catalog", &catalog]).terminate(Duration::from_secs(30));
    assert!(!cut_short.exists(), "the start left it");
    let other = dir.join("other.toml");
    std::fs::write(
        &other,
        "[[sku]]\nid = 1\nstock = 1\n[[sku]]\nid = 2\nstock = 5\n",
    )
    .unwrap();
    let (code, stderr) = serve_fails(&["--data", &data, "--catalog", other.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("catalog fingerprint"), "{stderr}");
    let (code, stderr) = serve_fails(&["--data", &data, "--catalog", &catalog, "--shards", "2"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("shard count"), "{stderr}");
    // Without its manifest, or its sale epoch (which the journal's instants count from),
    // the journal is refused under any catalog, its own included, nothing is written in
    // the file's place, and `check` says a restart would refuse it.
    for (file, refused, checked) in [
        (
            "flashsale.manifest",
            "but no manifest",
            "no manifest beside",
        ),
        ("sale.epoch", "but no sale.epoch", "a restart refuses"),
    ] {
        let path = std::path::Path::new(&data).join(file);
        let kept = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        for with in [&catalog, other.to_str().unwrap()] {
            let (code, stderr) = serve_fails(&["--data", &data, "--catalog", with]);
            assert_eq!(code, 2, "{stderr}");
            assert!(
                stderr.contains(&format!("shard-00000.fsj {refused}")),
                "{stderr}"
            );
        }
        assert!(!path.exists(), "nothing written in place of {file}");
        let (code, stdout, stderr) = check(&data, &catalog, &[]);
        assert_eq!(code, Some(1), "{stdout}{stderr}");
        assert!(
            stdout.contains(checked) || stderr.contains(checked),
            "{stdout}{stderr}"
        );
        std::fs::write(&path, kept).unwrap();
    }
    // Damage in the directory's small files: refused by `serve` (exit 1, the journal
    // cannot be read) and reported by `check` (exit 1).
    let serve_refuses_damage = |context: &str| {
        let (code, stderr) = serve_fails(&["--data", &data, "--catalog", &catalog]);
        assert_eq!(code, 1, "{context}: {stderr}");
        assert!(stderr.contains("is damaged"), "{stderr}");
    };
    let check_reports_damage = || {
        let (code, stdout, stderr) = check(&data, &catalog, &[]);
        assert_eq!(code, Some(1), "{stdout}{stderr}");
        assert!(stderr.contains("is damaged"), "{stdout}{stderr}");
    };
    // A manifest with one bit of its title flipped.
    let path = std::path::Path::new(&data).join("flashsale.manifest");
    let kept = std::fs::read(&path).unwrap();
    let mut damaged = kept.clone();
    damaged[3] ^= 0x04;
    std::fs::write(&path, &damaged).unwrap();
    serve_refuses_damage("the manifest's title");
    check_reports_damage();
    std::fs::write(&path, kept).unwrap();
    // The sale's epoch: a digit changed unnoticed would move every instant of the sale.
    // Each bit of a leading and a middle digit, both line ends and the check line's first
    // letter and digit flipped: refused as damage (exit 1), by `serve` and by `check`.
    let path = std::path::Path::new(&data).join("sale.epoch");
    let kept = std::fs::read(&path).unwrap();
    let text = String::from_utf8(kept.clone()).unwrap();
    let (digits, check_line) = text.trim_end().split_once('\n').unwrap();
    assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
    assert!(check_line.starts_with("check "), "{text:?}");
    let first_end = digits.len();
    for at in [
        0,
        first_end / 2,
        first_end,
        first_end + 1,
        first_end + 7,
        kept.len() - 1,
    ] {
        for bit in 0..8 {
            let mut damaged = kept.clone();
            damaged[at] ^= 1 << bit;
            std::fs::write(&path, &damaged).unwrap();
            serve_refuses_damage(&format!("byte {at} bit {bit}"));
        }
    }
    check_reports_damage();
    // Written back by hand, the number alone: served.
    std::fs::write(&path, format!("{digits}\n")).unwrap();
    serve(&["--data", &data, "--catalog", &catalog]).terminate(Duration::from_secs(30));
    std::fs::write(&path, kept).unwrap();
    serve(&["--data", &data, "--catalog", &catalog]).terminate(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
}

fn token(secret: &str, sub: &str) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims { sub, exp },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A test key's path: the keys under `tests/fixtures/jwt` sign nothing real.
fn key_file(name: &str) -> String {
    format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn tls_file(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// An identity provider's key URL: https on 127.0.0.1 with the test CA's certificate,
/// answering every GET with the status and body last set, counting the GETs. Its thread
/// serves one connection at a time until the test process ends.
struct KeyServer {
    url: String,
    answer: std::sync::Arc<std::sync::Mutex<(u16, Vec<u8>)>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl KeyServer {
    fn start(body: Vec<u8>) -> Self {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(tls_file("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(tls_file("server-key.pem")).unwrap();
        let config = std::sync::Arc::new(
            rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "https://127.0.0.1:{}/.well-known/jwks.json",
            listener.local_addr().unwrap().port()
        );
        let answer = std::sync::Arc::new(std::sync::Mutex::new((200, body)));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (given, counted) = (answer.clone(), fetches.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming().map_while(Result::ok) {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(tls) = rustls::ServerConnection::new(config.clone()) else {
                    continue;
                };
                let mut stream = rustls::StreamOwned::new(tls, tcp);
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && matches!(stream.read(&mut byte), Ok(1)) {
                    request.push(byte[0]);
                }
                if !request.starts_with(b"GET ") {
                    continue;
                }
                let (status, body) = given.lock().unwrap().clone();
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
        });
        Self {
            url,
            answer,
            fetches,
        }
    }

    fn answer(&self, status: u16, body: Vec<u8>) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token saying `claims`, signed with a test private key.
fn signed_claims(
    algorithm: jsonwebtoken::Algorithm,
    private_key: &str,
    kid: Option<&str>,
    claims: &Value,
) -> String {
    let pem = std::fs::read(key_file(private_key)).unwrap();
    let key = match private_key {
        key if key.starts_with("rsa") => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
        key if key.starts_with("ec") => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
        _ => jsonwebtoken::EncodingKey::from_ed_pem(&pem),
    }
    .unwrap();
    let mut header = jsonwebtoken::Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A token for buyer `sub` signed with a test private key, expiring `expires_in` seconds
/// from now (negative: expired).
fn signed(
    algorithm: jsonwebtoken::Algorithm,
    private_key: &str,
    kid: Option<&str>,
    sub: &str,
    expires_in: i64,
) -> String {
    signed_claims(
        algorithm,
        private_key,
        kid,
        &json!({"sub": sub, "exp": unix_now() + expires_in}),
    )
}

/// One unit of SKU 1 bought by whoever `token` says, with key 1.
async fn buy_with_token(
    http: &reqwest::Client,
    server: &Serve,
    token: String,
) -> (StatusCode, Value) {
    call(
        http.post(server.url("/sales/1/buy"))
            .bearer_auth(token)
            .json(&json!({"qty": 1, "key": 1})),
    )
    .await
}

/// That a buy was confirmed for `user`.
/// After the keys rotated from the RSA key to the EC key: buyer 6's EC token is served,
/// and buyer 5's RSA one, remembered as verified before, is refused with its key.
async fn assert_rotated_to_ec(http: &reqwest::Client, server: &Serve, ec: String, rsa: String) {
    assert_bought(buy_with_token(http, server, ec).await, 6, "EC, now given");
    let (status, _) = buy_with_token(http, server, rsa).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the RSA token, remembered as verified, is forgotten with its key"
    );
}

/// After a read of the keys that failed: buyer 6's EC token still verifies (its key 1
/// again: a duplicate, not a 401).
async fn assert_ec_kept(http: &reqwest::Client, server: &Serve, ec: String) {
    let (status, again) = buy_with_token(http, server, ec).await;
    assert_eq!(
        (status, again["reason"].as_str()),
        (StatusCode::CONFLICT, Some("duplicate")),
        "EC, kept: the buyer's key 1 again, not a 401"
    );
}

fn assert_bought((status, bought): (StatusCode, Value), user: u64, context: &str) {
    assert_eq!(
        (status, bought["user"].as_u64()),
        (StatusCode::OK, Some(user)),
        "{context}: {bought}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyer_tokens_verify_with_public_keys_and_key_sets() {
    use jsonwebtoken::Algorithm::{ES256, EdDSA, HS256, PS256, RS256};
    let http = client();
    let rsa = key_file("rsa-public.pem");
    let ec = key_file("ec-public.pem");
    let server = serve(&[
        "--in-memory",
        "--auth",
        "jwt",
        "--jwt-key",
        &rsa,
        "--jwt-key",
        &ec,
    ]);
    let buy = |token: String| buy_with_token(&http, &server, token);
    for (algorithm, key, user) in [
        (RS256, "rsa-private.pem", 5),
        (PS256, "rsa-private.pem", 6),
        (ES256, "ec-private.pem", 7),
    ] {
        let answer = buy(signed(algorithm, key, None, &user.to_string(), 600)).await;
        assert_bought(answer, user, &format!("{algorithm:?}"));
    }
    let public_pem = String::from_utf8(std::fs::read(&rsa).unwrap()).unwrap();
    let hmac_with_public_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(HS256),
        &json!({"sub": "8", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    for (why, token) in [
        (
            "a key not given",
            signed(EdDSA, "ed25519-private.pem", None, "8", 600),
        ),
        (
            "expired",
            signed(RS256, "rsa-private.pem", None, "8", -3600),
        ),
        (
            "the public key passed off as an HMAC secret",
            hmac_with_public_key,
        ),
    ] {
        let (status, _) = buy(token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}");
    }
    // Two Authorization headers, each with a token that verifies: which would speak is not
    // for the server to guess.
    let (status, refused) = call(
        http.post(server.url("/sales/1/buy"))
            .bearer_auth(signed(RS256, "rsa-private.pem", None, "5", 600))
            .bearer_auth(signed(ES256, "ec-private.pem", None, "7", 600))
            .json(&json!({"qty": 1, "key": 2})),
    )
    .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (
            StatusCode::UNAUTHORIZED,
            Some("more than one Authorization header")
        ),
        "{refused}"
    );
    server.terminate(Duration::from_secs(30));

    // A JWKS: `rsa-1` for RS256 only, `ed-1` for EdDSA, `rsa-enc` (the same RSA key, for
    // encryption) skipped (a set of it alone is refused below). A kid that names no key
    // of ours is tried against each.
    let jwks = key_file("jwks.json");
    let server = serve(&["--in-memory", "--auth", "jwt", "--jwt-key", &jwks]);
    let buy = |token: String| buy_with_token(&http, &server, token);
    for (algorithm, key, kid, user) in [
        (RS256, "rsa-private.pem", Some("rsa-1"), 5),
        (EdDSA, "ed25519-private.pem", Some("ed-1"), 6),
        (EdDSA, "ed25519-private.pem", None, 7),
        (RS256, "rsa-private.pem", Some("a kid nobody has"), 8),
    ] {
        let answer = buy(signed(algorithm, key, kid, &user.to_string(), 600)).await;
        assert_bought(answer, user, &format!("{algorithm:?} {kid:?}"));
    }
    for (why, token) in [
        (
            "PS256 where the key names RS256",
            signed(PS256, "rsa-private.pem", Some("rsa-1"), "9", 600),
        ),
        (
            "signed by another key than its kid names",
            signed(EdDSA, "ed25519-private.pem", Some("rsa-1"), "9", 600),
        ),
        (
            "a key not in the set",
            signed(ES256, "ec-private.pem", None, "9", 600),
        ),
    ] {
        let (status, _) = buy(token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}");
    }
    server.terminate(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyer_tokens_name_the_audience_and_issuer_asked_for() {
    use jsonwebtoken::Algorithm::RS256;
    let http = client();
    let rsa = key_file("rsa-public.pem");
    let exp = unix_now() + 600;
    let token = |claims: Value| signed_claims(RS256, "rsa-private.pem", None, &claims);
    let server = serve(&[
        "--in-memory",
        "--auth",
        "jwt",
        "--jwt-key",
        &rsa,
        "--jwt-audience",
        "flash-shop",
        "--jwt-audience",
        "flash-shop-eu",
        "--jwt-issuer",
        "https://id.example",
    ]);
    let buy = |token: String| buy_with_token(&http, &server, token);
    let iss = "https://id.example";
    for (user, aud) in [
        (5, json!("flash-shop")),
        (6, json!(["other", "flash-shop-eu"])),
    ] {
        let claims = json!({"sub": user.to_string(), "exp": exp, "aud": aud, "iss": iss});
        assert_bought(buy(token(claims)).await, user, &aud.to_string());
    }
    for (why, claims) in [
        (
            "another audience",
            json!({"sub": "7", "exp": exp, "aud": "other", "iss": iss}),
        ),
        ("no audience", json!({"sub": "7", "exp": exp, "iss": iss})),
        (
            "another issuer",
            json!({"sub": "7", "exp": exp, "aud": "flash-shop", "iss": "https://evil.example"}),
        ),
        (
            "no issuer",
            json!({"sub": "7", "exp": exp, "aud": "flash-shop"}),
        ),
        (
            "not valid for another hour",
            json!({"sub": "7", "exp": exp, "aud": "flash-shop", "iss": iss,
                "nbf": unix_now() + 3_600}),
        ),
    ] {
        let (status, _) = buy(token(claims)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}");
    }
    // Valid from a moment ago, or from within the leeway ahead (clocks differ a little).
    for (user, nbf) in [(9, unix_now() - 5), (10, unix_now() + 30)] {
        let claims = json!({"sub": user.to_string(), "exp": exp, "aud": "flash-shop", "iss": iss, "nbf": nbf});
        assert_bought(buy(token(claims)).await, user, &format!("nbf {nbf}"));
    }
    server.terminate(Duration::from_secs(30));

    // Without --jwt-audience, a token for some audience is not for this server.
    let server = serve(&["--in-memory", "--auth", "jwt", "--jwt-key", &rsa]);
    let for_some_audience = token(json!({"sub": "8", "exp": exp, "aud": "flash-shop"}));
    let (status, _) = buy_with_token(&http, &server, for_some_audience).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.terminate(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_the_token_keys_again() {
    use jsonwebtoken::Algorithm::{ES256, RS256};
    let dir = scratch("sighup");
    let keys = dir.join("keys.pem");
    std::fs::copy(key_file("rsa-public.pem"), &keys).unwrap();
    let http = client();
    let server = serve(&[
        "--in-memory",
        "--auth",
        "jwt",
        "--jwt-key",
        keys.to_str().unwrap(),
    ]);
    let rsa = || signed(RS256, "rsa-private.pem", None, "5", 600);
    let ec = || signed(ES256, "ec-private.pem", None, "6", 600);
    assert_bought(buy_with_token(&http, &server, rsa()).await, 5, "RSA");
    let (status, _) = buy_with_token(&http, &server, ec()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "EC, before it is given");

    // The provider rotates to its EC key: the file is replaced, and SIGHUP reads it.
    std::fs::copy(key_file("ec-public.pem"), &keys).unwrap();
    server.hang_up_until("buyer token keys read again: 1 keys");
    assert_rotated_to_ec(&http, &server, ec(), rsa()).await;

    // A file that does not read leaves the keys as they were.
    std::fs::write(&keys, "not a key\n").unwrap();
    let line = server.hang_up_until("the old buyer token keys stay");
    assert!(line.contains("neither a PEM"), "{line}");
    assert_ec_kept(&http, &server, ec()).await;
    server.terminate(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);

    // Without key files a SIGHUP changes nothing, and does not stop the server.
    let server = serve(&["--in-memory"]);
    server.hang_up_until("nothing to read again");
    let (status, _) = call(http.get(server.url("/sales"))).await;
    assert_eq!(status, StatusCode::OK);
    server.terminate(Duration::from_secs(30));
}

/// The arguments of an in-memory `serve` taking its buyer token keys from `url`, trusting
/// the CA certificate in `ca`.
fn key_url_args<'a>(url: &'a str, ca: &'a str) -> [&'a str; 7] {
    [
        "--in-memory",
        "--auth",
        "jwt",
        "--jwt-key",
        url,
        "--jwt-ca",
        ca,
    ]
}

/// A key server publishing `jwks.json`, and a server taking its buyer token keys from
/// there (trusting the test CA), fetched again every `refresh`.
fn serve_with_key_url(refresh: &str) -> (KeyServer, Serve) {
    let provider = KeyServer::start(std::fs::read(key_file("jwks.json")).unwrap());
    let ca = tls_file("ca.pem");
    let mut args = key_url_args(&provider.url, &ca).to_vec();
    args.extend(["--jwt-key-refresh", refresh]);
    let server = serve(&args);
    (provider, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyer_token_keys_are_fetched_from_a_url_and_again_when_they_change() {
    use jsonwebtoken::Algorithm::{ES256, RS256};
    let (provider, server) = serve_with_key_url("100ms");
    let http = client();
    let rsa = || signed(RS256, "rsa-private.pem", Some("rsa-1"), "5", 600);
    let ec = || signed(ES256, "ec-private.pem", None, "6", 600);
    assert_bought(
        buy_with_token(&http, &server, rsa()).await,
        5,
        "RSA, from the URL",
    );
    let (status, _) = buy_with_token(&http, &server, ec()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "EC, not published yet");

    // The provider rotates to its EC key (served as PEM): the next refresh takes it.
    provider.answer(200, std::fs::read(key_file("ec-public.pem")).unwrap());
    server.said("buyer token keys changed where they are read from: 1 keys");
    assert_rotated_to_ec(&http, &server, ec(), rsa()).await;

    // The provider fails: the keys stay, and it is tried again.
    provider.answer(500, b"down".to_vec());
    let line = server.said("buyer token keys not read again");
    assert!(line.contains("answered 500"), "{line}");
    assert_ec_kept(&http, &server, ec()).await;

    // Back with the same keys: fetched, and nothing changes.
    provider.answer(200, std::fs::read(key_file("ec-public.pem")).unwrap());
    let fetched = provider.fetches();
    let deadline = Instant::now() + Duration::from_secs(60);
    while provider.fetches() < fetched + 3 {
        assert!(
            Instant::now() < deadline,
            "no fetches after the provider came back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let said: Vec<String> = server.lines.try_iter().collect();
    assert!(
        said.iter().all(|line| !line.contains("changed")),
        "the same keys fetched again are not new keys: {said:?}"
    );
    // SIGHUP fetches too.
    server.hang_up_until("buyer token keys read again: 1 keys");
    server.terminate(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_naming_a_new_key_fetches_the_keys_at_once() {
    use jsonwebtoken::Algorithm::{ES256, EdDSA};
    // A refresh period of an hour: any fetch below is one a token asked for.
    let (provider, server) = serve_with_key_url("1h");
    let http = client();
    let started = provider.fetches();
    // The provider publishes its EC key as `ec-1` and signs with it at once.
    provider.answer(200, std::fs::read(key_file("jwks-rotated.json")).unwrap());
    let ec = || signed(ES256, "ec-private.pem", Some("ec-1"), "6", 600);
    let (status, _) = buy_with_token(&http, &server, ec()).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "before the fetch it asks for"
    );
    server.said("a token names a key not among ours");
    server.said("buyer token keys changed where they are read from: 2 keys");
    assert_eq!(provider.fetches(), started + 1);
    assert_bought(
        buy_with_token(&http, &server, ec()).await,
        6,
        "ec-1, fetched",
    );

    // Made-up key ids ask for no more fetches within the next 30 s.
    for made_up in 0..20 {
        let kid = format!("made-up-{made_up}");
        let token = signed(EdDSA, "ed25519-private.pem", Some(&kid), "7", 600);
        let (status, _) = buy_with_token(&http, &server, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{kid}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        provider.fetches(),
        started + 1,
        "made-up key ids fetched again"
    );
    server.terminate(Duration::from_secs(30));
}

/// A forward proxy on 127.0.0.1 that answers `CONNECT` to any host by connecting to the
/// same port on 127.0.0.1 (so `keys.test`, a name no resolver knows, reaches the tests' key
/// server), if the request carries `authorization`; remembers each request's first line.
struct ForwardProxy {
    url: String,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ForwardProxy {
    fn start(authorization: &'static str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = asked.clone();
        std::thread::spawn(move || {
            for mut client in listener.incoming().map_while(Result::ok) {
                let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && matches!(client.read(&mut byte), Ok(1)) {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let first = head.lines().next().unwrap_or("").to_owned();
                seen.lock().unwrap().push(first.clone());
                let allowed = head.lines().any(|line| {
                    line.eq_ignore_ascii_case(&format!("proxy-authorization: {authorization}"))
                });
                let target_port = first
                    .strip_prefix("CONNECT ")
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|target| target.rsplit_once(':'))
                    .and_then(|(_, port)| port.parse::<u16>().ok());
                let (Some(target_port), true) = (target_port, allowed) else {
                    let _ = client.write_all(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n",
                    );
                    continue;
                };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target_port)) else {
                    let _ =
                        client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
                    continue;
                };
                let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                let _ = client.set_read_timeout(None);
                let (mut up_from, mut up_to) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_from, &mut up_to);
                    let _ = up_to.shutdown(std::net::Shutdown::Write);
                });
                let (mut down_from, mut down_to) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut down_from, &mut down_to);
                    let _ = down_to.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self {
            url: format!("127.0.0.1:{port}"),
            asked,
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyer_token_keys_are_fetched_through_the_proxy_https_proxy_names() {
    use jsonwebtoken::Algorithm::RS256;
    let provider = KeyServer::start(std::fs::read(key_file("jwks.json")).unwrap());
    let port = provider
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let url = format!("https://keys.test:{port}/.well-known/jwks.json");
    let ca = tls_file("ca.pem");
    // `user:p@ss`, its `@` escaped in the URL.
    let proxy = ForwardProxy::start("Basic dXNlcjpwQHNz");
    let env_proxy = format!("http://user:p%40ss@{}", proxy.url);
    let args = key_url_args(&url, &ca);
    let server = serve_with_env(&args, &[("HTTPS_PROXY", &env_proxy)]);
    assert_eq!(
        proxy.asked(),
        [format!("CONNECT keys.test:{port} HTTP/1.1")]
    );
    assert_eq!(provider.fetches(), 1);
    let token = signed(RS256, "rsa-private.pem", Some("rsa-1"), "5", 600);
    assert_bought(
        buy_with_token(&client(), &server, token).await,
        5,
        "RSA, through the proxy",
    );
    server.terminate(Duration::from_secs(30));

    // This machine is never reached through the proxy (the key server's own URL names
    // 127.0.0.1); nor is a host `NO_PROXY` lists, which here no resolver knows.
    let direct = key_url_args(&provider.url, &ca);
    let server = serve_with_env(&direct, &[("HTTPS_PROXY", &env_proxy)]);
    server.terminate(Duration::from_secs(30));
    for no_proxy in ["keys.test", ".test", "example.com, *"] {
        let (code, stderr) = serve_fails_with_env(
            &args,
            &[("HTTPS_PROXY", &env_proxy), ("NO_PROXY", no_proxy)],
        );
        assert_eq!(code, 2, "{no_proxy}: {stderr}");
        // Resolving `keys.test` fails at once, or, where the machine's name server is out
        // of reach, outlasts the fetch's time limit; either way the proxy is not asked.
        assert!(
            stderr.contains("cannot connect") || stderr.contains("no whole answer within"),
            "{no_proxy}: {stderr}"
        );
    }
    assert_eq!(proxy.asked().len(), 1, "{:?}", proxy.asked());

    // A proxy that refuses, and one not named well: the start stops with the reason.
    let wrong = format!("http://user:wrong@{}", proxy.url);
    let (code, stderr) = serve_fails_with_env(&args, &[("HTTPS_PROXY", &wrong)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("407 Proxy Authentication Required"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong"),
        "credentials kept out of messages: {stderr}"
    );
    for (bad, why) in [
        ("http://127.0.0.1", "give the proxy's port"),
        ("socks5://127.0.0.1:1080", "only an http:// proxy"),
    ] {
        let (code, stderr) = serve_fails_with_env(&args, &[("HTTPS_PROXY", bad)]);
        assert_eq!(code, 2, "{bad}: {stderr}");
        assert!(stderr.contains(why), "{bad}: {stderr}");
    }
}

#[test]
fn bad_token_keys_stop_the_start_with_a_reason() {
    let dir = scratch("jwt-keys");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a key\n").unwrap();
    let empty_set = dir.join("empty.json");
    std::fs::write(&empty_set, r#"{"keys": [{"kty": "XYZ"}]}"#).unwrap();
    let encryption_only = dir.join("encryption.json");
    let set: Value =
        serde_json::from_slice(&std::fs::read(key_file("jwks.json")).unwrap()).unwrap();
    let encryption_key = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["use"] == "enc")
        .unwrap();
    std::fs::write(
        &encryption_only,
        json!({ "keys": [encryption_key] }).to_string(),
    )
    .unwrap();
    let bad_rsa = dir.join("bad-rsa.pem");
    std::fs::write(
        &bad_rsa,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let private = key_file("rsa-private.pem");
    let public = key_file("rsa-public.pem");
    let missing = dir.join("missing.pem");
    let provider = KeyServer::start(std::fs::read(key_file("jwks.json")).unwrap());
    let missing_provider = KeyServer::start(b"not here".to_vec());
    missing_provider.answer(404, b"not here".to_vec());
    let missing_url = missing_provider.url.clone();
    let ca = tls_file("ca.pem");
    for (args, expected) in [
        (vec!["--jwt-key", &private], "holds a private key"),
        (
            vec!["--jwt-key", garbage.to_str().unwrap()],
            "neither a PEM",
        ),
        (
            vec!["--jwt-key", empty_set.to_str().unwrap()],
            "no signing key",
        ),
        (
            vec!["--jwt-key", bad_rsa.to_str().unwrap()],
            "is not an RSA",
        ),
        (vec!["--jwt-key", missing.to_str().unwrap()], "missing.pem"),
        (vec!["--jwt-key", "/dev/zero"], "not a file"),
        (vec!["--jwt-key", dir.to_str().unwrap()], "not a file"),
        (
            vec![
                "--jwt-key",
                &public,
                "--jwt-secret",
                "a-32-byte-secret-for-buyer-token",
            ],
            "not both",
        ),
        (vec![], "needs --jwt-secret"),
        (vec!["--jwt-key", &provider.url], "invalid peer certificate"),
        (
            vec!["--jwt-key", &missing_url, "--jwt-ca", &ca],
            "answered 404",
        ),
        (
            vec!["--jwt-key", "http://id.example.com/jwks"],
            "only from this machine",
        ),
        (
            vec!["--jwt-key", "https://127.0.0.1:1/jwks", "--jwt-ca", &ca],
            "cannot connect",
        ),
        (
            vec![
                "--jwt-key",
                &provider.url,
                "--jwt-ca",
                garbage.to_str().unwrap(),
            ],
            "no PEM certificate",
        ),
        (
            vec!["--jwt-key", &public, "--jwt-ca", &ca],
            "is for --jwt-key https URLs",
        ),
        (
            vec!["--jwt-key", &public, "--jwt-key-refresh", "0s"],
            "must be above 0",
        ),
        // Secrets short enough to find by trying, named by flag and length only.
        (
            vec!["--jwt-secret", "k1-short-hmac-secret"],
            "--jwt-secret (or FLASHSALE_JWT_SECRET): 20 bytes; a secret of at least 32",
        ),
        (
            vec!["--jwt-key", &public, "--admin-token", "q7z"],
            "--admin-token (or FLASHSALE_ADMIN_TOKEN): 3 bytes; a secret of at least 16",
        ),
    ] {
        let mut all = vec!["--in-memory", "--auth", "jwt"];
        all.extend(args);
        let (code, stderr) = serve_fails(&all);
        assert_eq!(code, 2, "{all:?}: {stderr}");
        assert!(stderr.contains(expected), "{all:?}: {stderr}");
        for secret in ["k1-short-hmac-secret", "q7z"] {
            assert!(!stderr.contains(secret), "{stderr}");
        }
    }
    // A machine without a CA bundle (the system's roots are read from these when set).
    let missing = missing.to_str().unwrap();
    let (code, stderr) = serve_fails_with_env(
        &["--in-memory", "--auth", "jwt", "--jwt-key", &provider.url],
        &[("SSL_CERT_FILE", missing), ("SSL_CERT_DIR", missing)],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no trusted CA certificates"), "{stderr}");
    for flag in ["--jwt-key", "--jwt-audience", "--jwt-issuer", "--jwt-ca"] {
        let (code, stderr) = serve_fails(&["--in-memory", "--auth", "header", flag, &public]);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains(&format!("{flag} is for --auth jwt")),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_are_who_their_token_or_proxy_says() {
    let server = serve(&[
        "--in-memory",
        "--auth",
        "jwt",
        "--jwt-secret",
        "a-32-byte-secret-for-buyer-token",
    ]);
    let http = client();
    let body = json!({"qty": 1, "key": 1});
    let post = || http.post(server.url("/sales/1/buy"));
    let (status, none) = call(post().json(&body)).await;
    assert_eq!(
        (status, none["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let (status, _) = call(post().bearer_auth(token("other-secret", "5")).json(&body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(
        post()
            .bearer_auth(token("a-32-byte-secret-for-buyer-token", "five"))
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, mismatch) = call(
        post()
            .bearer_auth(token("a-32-byte-secret-for-buyer-token", "5"))
            .json(&json!({"user": 6, "qty": 1, "key": 1})),
    )
    .await;
    assert_eq!(
        (status, mismatch["reason"].as_str()),
        (StatusCode::FORBIDDEN, Some("buyer_mismatch"))
    );
    let (status, bought) = call(
        post()
            .bearer_auth(token("a-32-byte-secret-for-buyer-token", "5"))
            .json(&body),
    )
    .await;
    assert_eq!((status, bought["user"].as_u64()), (StatusCode::OK, Some(5)));
    let order = bought["order"].as_u64().unwrap();
    let (status, theirs) = call(
        http.get(server.url(&format!("/orders/{order}")))
            .bearer_auth(token("a-32-byte-secret-for-buyer-token", "6")),
    )
    .await;
    assert_eq!(
        (status, theirs["reason"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_your_order"))
    );
    let (status, _) = call(
        http.post(server.url(&format!("/orders/{order}/cancel")))
            .bearer_auth(token("a-32-byte-secret-for-buyer-token", "6")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, mine) = call(
        http.post(server.url(&format!("/orders/{order}/pay")))
            .bearer_auth(token("a-32-byte-secret-for-buyer-token", "5")),
    )
    .await;
    assert_eq!(
        (status, mine["state"].as_str()),
        (StatusCode::OK, Some("paid"))
    );
    let (status, _) = call(
        http.get(server.url("/orders/events"))
            .bearer_auth(token("a-32-byte-secret-for-buyer-token", "5")),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the feed is the operator's, and there is none"
    );
    let (status, _) = call(http.get(server.url("/events"))).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "so is the live page's stream"
    );
    let (status, off) = call(http.post(server.url("/admin/sales/1/close"))).await;
    assert_eq!(
        (status, off["reason"].as_str()),
        (StatusCode::FORBIDDEN, Some("admin_disabled"))
    );
    server.terminate(Duration::from_secs(30));

    let server = serve(&[
        "--in-memory",
        "--auth",
        "header",
        "--rate-per-buyer",
        "1",
        "--burst-per-buyer",
        "2",
    ]);
    let (status, _) = call(http.post(server.url("/sales/1/buy")).json(&body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(
        http.post(server.url("/sales/1/buy"))
            .header("x-buyer-id", "+5")
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The header twice (a proxy that appended its own to the client's): refused, not the
    // first taken.
    let (status, refused) = call(
        http.post(server.url("/sales/1/buy"))
            .header("x-buyer-id", "6")
            .header("x-buyer-id", "5")
            .json(&body),
    )
    .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("more than one buyer header")),
        "{refused}"
    );
    let as_five = |key: u64| {
        http.post(server.url("/sales/1/buy"))
            .header("x-buyer-id", "5")
            .json(&json!({"qty": 1, "key": key}))
    };
    assert_eq!(call(as_five(1)).await.0, StatusCode::OK);
    assert_eq!(call(as_five(2)).await.0, StatusCode::OK);
    let response = as_five(3).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let limited: Value = response.json().await.unwrap();
    assert_eq!(limited["reason"], "rate_limited");
    server.terminate(Duration::from_secs(30));
}

/// The order feed's checkpoint (written by a clean stop) is used only while every journal
/// is the one it was written from: after buys and a SIGKILL the journals have moved on and
/// the restart replays them; a damaged checkpoint (one flipped bit, or cut short) is named
/// and replayed past. Each way the feed reads the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_checkpoint_is_used_only_with_the_journals_it_was_written_from() {
    let (dir, data, catalog) =
        scratch_sale("checkpoint", "[[sku]]\nid = 1\nstock = 100\nlimit = 1\n");
    let args = unsynced_with_operator(&data, &catalog, &["--shards", "1"]);
    let http = client();
    let kinds_and_users = |server: &Serve| {
        let http = http.clone();
        let url = server.url("/orders/events?limit=100&wait_ms=0");
        async move {
            let (status, page) = call(http.get(url).bearer_auth("operator-token-16")).await;
            assert_eq!(status, StatusCode::OK);
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|event| {
                    (
                        event["kind"].as_str().unwrap().to_owned(),
                        event["user"].as_u64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let buy_as = |server: &Serve, user: u64| {
        let http = http.clone();
        let url = server.url("/sales/1/buy");
        async move {
            let (status, _) = call(
                http.post(url)
                    .json(&json!({"user": user, "qty": 1, "key": 1})),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
        }
    };
    let confirmed = |users: std::ops::RangeInclusive<u64>| {
        users
            .map(|user| ("confirmed".to_owned(), user))
            .collect::<Vec<_>>()
    };
    let checkpoint = std::path::Path::new(&data).join("feed.checkpoint");

    let server = serve(&args);
    for user in 1..=3 {
        buy_as(&server, user).await;
    }
    server.terminate(Duration::from_secs(30));
    let written = std::fs::read(&checkpoint).unwrap();

    // From the checkpoint; then two more buys, and a SIGKILL: no new checkpoint.
    let server = serve(&args);
    assert!(
        server.ready.contains("holds 3 events, from its checkpoint"),
        "{}",
        server.ready
    );
    for user in 4..=5 {
        buy_as(&server, user).await;
    }
    server.kill();
    assert_eq!(
        std::fs::read(&checkpoint).unwrap(),
        written,
        "the old checkpoint is still there"
    );
    let server = serve(&args);
    assert!(
        server.ready.contains("holds 5 events, from the journals"),
        "{}",
        server.ready
    );
    assert!(
        server.said_before_ready.iter().any(|line| {
            line.contains("shard 0's journal is not the one the checkpoint was written from (")
                && line.contains(" bytes then, ")
        }),
        "{:?}",
        server.said_before_ready
    );
    assert_eq!(kinds_and_users(&server).await, confirmed(1..=5));
    server.terminate(Duration::from_secs(30));

    // Damaged: one bit flipped in an event, or the file cut short.
    let whole = std::fs::read(&checkpoint).unwrap();
    let mut flipped = whole.clone();
    flipped[whole.len() - 30] ^= 0x10;
    for (damage, bytes) in [
        ("flipped", flipped),
        ("cut", whole[..whole.len() - 41].to_vec()),
    ] {
        std::fs::write(&checkpoint, bytes).unwrap();
        let server = serve(&args);
        assert!(
            server.ready.contains("holds 5 events, from the journals"),
            "{damage}: {}",
            server.ready
        );
        assert!(
            server
                .said_before_ready
                .iter()
                .any(|line| line.contains("the order feed's checkpoint is not used")),
            "{damage}: {:?}",
            server.said_before_ready
        );
        assert_eq!(kinds_and_users(&server).await, confirmed(1..=5), "{damage}");
        server.terminate(Duration::from_secs(30));
    }
    // And whole again after that clean stop.
    let server = serve(&args);
    assert!(
        server.ready.contains("holds 5 events, from its checkpoint"),
        "{}",
        server.ready
    );
    assert_eq!(kinds_and_users(&server).await, confirmed(1..=5));
    server.terminate(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A damaged snapshot is passed over at start-up with one line naming its file and the
/// reason; the journal replayed from an older point gives the same orders. `flashsale
/// check` reads the directory without changing it and says the same beforehand, and that
/// a journal damaged inside would be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_passed_over_is_named_by_serve_and_by_check() {
    let (dir, data, catalog) = scratch_sale("passed", "[[sku]]\nid = 1\nstock = 100\nlimit = 1\n");
    let args = unsynced_with_operator(&data, &catalog, &["--shards", "1", "--snapshot-every", "2"]);
    let http = client();
    let server = serve(&args);
    let one = |user: u64, key: u64| json!({"user": user, "qty": 1, "key": key});
    for user in 1..=5u64 {
        let (status, _) = buy(&http, &server, "1", one(user, 1)).await;
        assert_eq!(status, StatusCode::OK);
    }
    server.terminate(Duration::from_secs(30));
    let check = |more: &[&str]| check(&data, &catalog, more);
    let files = || {
        let mut files: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                (path, bytes)
            })
            .collect();
        files.sort();
        files
    };
    let before = files();
    let (code, said, _) = check(&[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(files() == before, "the check changed nothing");
    for line in [
        "shard 0: journal ",
        "5 commands, closed cleanly",
        "(at command 4): restores (a restart starts from it)",
        "(at command 2): restores (older: a fallback)",
        "shard 0: a restart restores the snapshot at command 4 and replays 1 command\n",
        "that state is the whole journal's: 5 orders, 5 units held, 0 sold",
        "order feed: its checkpoint matches the journals (5 events)",
        "verdict: a restart recovers every shard",
    ] {
        assert!(said.contains(line), "{line:?} in {said}");
    }
    let (code, _, why) = check(&["--shards", "2"]);
    assert_eq!(code, Some(2), "{why}");
    let mut snapshots: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "fss"))
        .collect();
    snapshots.sort();
    let newest = snapshots.last().expect("snapshots were written");
    let mut bytes = std::fs::read(newest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(newest, bytes).unwrap();
    let (code, said, _) = check(&[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("(at command 4): passed over: checksum mismatch")
            && said.contains("a restart restores the snapshot at command 2 and replays 3"),
        "{said}"
    );

    let server = serve(&args);
    let named = format!(
        "flashsale serve: shard 0: snapshot {} (taken at command ",
        newest.display()
    );
    assert!(
        server.said_before_ready.iter().any(|line| line.starts_with(&named)
            && line.ends_with("passed over: checksum mismatch; replayed the journal from an older point instead")),
        "{:?}",
        server.said_before_ready
    );
    // The five orders are there: a sixth buy of each buyer is over the limit.
    for user in 1..=5u64 {
        let (status, answer) = buy(&http, &server, "1", one(user, 2)).await;
        assert_eq!(answer["reason"], "user_limit", "{status} {answer}");
    }
    server.terminate(Duration::from_secs(30));
    // A record damaged inside the journal: a restart would refuse it, and the check says
    // so, changing nothing.
    let journal = std::path::Path::new(&data).join("shard-00000.fsj");
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes[70] ^= 0x01;
    std::fs::write(&journal, &bytes).unwrap();
    let (code, said, _) = check(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("corrupt record at byte") && said.contains("a restart refuses it"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(&journal).unwrap(),
        bytes,
        "the check changed nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_feed_resumes_across_a_restart() {
    let (dir, data, catalog) = scratch_sale("feed", "[[sku]]\nid = 1\nstock = 100\nlimit = 1\n");
    let args = unsynced_with_operator(&data, &catalog, &[]);
    let server = serve(&args);
    let http = client();
    let mut orders = Vec::new();
    for user in 1..=5 {
        let (status, bought) = buy(
            &http,
            &server,
            "1",
            json!({"user": user, "qty": 1, "key": 1}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        orders.push(bought["order"].as_u64().unwrap());
    }
    let admin = |path: String| {
        http.post(server.url(&path))
            .bearer_auth("operator-token-16")
    };
    assert_eq!(
        call(admin(format!("/orders/{}/pay", orders[0]))).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(admin(format!("/orders/{}/cancel", orders[1]))).await.0,
        StatusCode::OK
    );
    let feed = |after: &str| {
        http.get(server.url(&format!("/orders/events?limit=3&wait_ms=0{after}")))
            .bearer_auth("operator-token-16")
    };
    let (status, page) = call(feed("")).await;
    assert_eq!(status, StatusCode::OK);
    let kinds = |page: &Value| {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["kind"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(&page), ["confirmed"; 3]);
    let cursor = page["cursor"].as_str().unwrap().to_owned();
    assert_eq!(cursor, "3");
    let (status, bad) = call(feed("&after=03")).await;
    assert_eq!(
        (status, bad["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("after"))
    );
    let (status, _) = call(feed("&after=99")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a cursor past the end");
    let (status, _) = call(
        http.get(server.url("/orders/events?after=0&colour=red"))
            .bearer_auth("operator-token-16"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown parameters are refused"
    );
    assert!(
        server.ready.contains("from the journals"),
        "{}",
        server.ready
    );
    let (_, said) = server.terminate(Duration::from_secs(30));
    assert!(
        said.contains("the order feed's checkpoint: 7 events"),
        "{said}"
    );

    // A clean stop left the feed's checkpoint: the restart reads it, not the journals.
    let server = serve(&args);
    assert!(
        server.ready.contains("recovered in")
            && server.ready.contains("holds 7 events, from its checkpoint"),
        "{}",
        server.ready
    );
    let feed = |after: &str| {
        http.get(server.url(&format!("/orders/events?limit=100&wait_ms=0&after={after}")))
            .bearer_auth("operator-token-16")
    };
    let (status, rest) = call(feed(&cursor)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        kinds(&rest),
        ["confirmed", "confirmed", "paid", "cancelled"],
        "{rest}"
    );
    let events = rest["events"].as_array().unwrap();
    assert_eq!(
        (events[2]["order"].as_u64(), events[3]["order"].as_u64()),
        (Some(orders[0]), Some(orders[1]))
    );
    let end = rest["cursor"].as_str().unwrap().to_owned();
    assert_eq!(end, "7");
    // A long poll at the end waits for the next event.
    let waiting = {
        let http = http.clone();
        let url = server.url(&format!("/orders/events?wait_ms=20000&after={end}"));
        tokio::spawn(async move { call(http.get(url).bearer_auth("operator-token-16")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        buy(&http, &server, "1", json!({"user": 9, "qty": 1, "key": 1}))
            .await
            .0,
        StatusCode::OK
    );
    let (status, next) = waiting.await.unwrap();
    assert_eq!(
        (status, kinds(&next)),
        (StatusCode::OK, vec!["confirmed".to_owned()])
    );
    assert_eq!(next["events"][0]["user"], 9);
    assert_eq!(next["cursor"], "8");
    server.terminate(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_that_fall_due_while_serve_is_down_follow_their_orders_in_the_feed() {
    let (dir, data, catalog) = scratch_sale(
        "feed-due",
        "[[sku]]\nid = 1\nstock = 100\nhold = \"1s\"\n\n[[sku]]\nid = 2\nstock = 100\nhold = \"1s\"\n",
    );
    let args = unsynced_with_operator(&data, &catalog, &["--shards", "2"]);
    let server = serve(&args);
    let http = client();
    for (user, sku) in [(1, "1"), (2, "2"), (3, "1"), (4, "2")] {
        let (status, _) = buy(
            &http,
            &server,
            sku,
            json!({"user": user, "qty": 1, "key": 1}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    server.terminate(Duration::from_secs(30));
    // Both holds of each shard fall due while it is down: the restarted engine expires them
    // as it starts, once the feed has replayed the journals.
    std::thread::sleep(Duration::from_millis(1500));

    let server = serve(&args);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let page = loop {
        let (status, page) = call(
            http.get(server.url("/orders/events?limit=100&wait_ms=1000"))
                .bearer_auth("operator-token-16"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        if page["events"].as_array().unwrap().len() >= 8 || std::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 8, "{page}");
    for shard in 0..2 {
        let of_shard: Vec<_> = events
            .iter()
            .filter(|event| event["shard"] == shard)
            .map(|event| {
                (
                    event["kind"].as_str().unwrap(),
                    event["order"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(of_shard.len(), 4, "{page}");
        let kinds: Vec<_> = of_shard.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(
            kinds,
            ["confirmed", "confirmed", "expired", "expired"],
            "{page}"
        );
        let mut confirmed: Vec<_> = of_shard[..2].iter().map(|(_, order)| *order).collect();
        let mut expired: Vec<_> = of_shard[2..].iter().map(|(_, order)| *order).collect();
        confirmed.sort_unstable();
        expired.sort_unstable();
        assert_eq!(confirmed, expired, "{page}");
    }
    assert_eq!(page["cursor"], "4,4");
    server.terminate(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_under_load_loses_no_answered_order() {
    const STOCK: u64 = 300;
    let (dir, data, catalog) = scratch_sale(
        "crash",
        &format!("[[sku]]\nid = 1\nstock = {STOCK}\nlimit = 1\n"),
    );
    let args = [
        "--data",
        &data,
        "--catalog",
        &catalog,
        "--admin-token",
        "operator-token-16",
        "--rate-per-buyer",
        "1000",
    ];
    let http = client();
    let mut answered: Vec<(u64, u64)> = Vec::new();
    let mut user = 0u64;
    for _cycle in 0..3 {
        let server = serve(&args);
        let base = server.base.clone();
        // 16 buyers at a time until 60 orders were answered, then SIGKILL mid-flight.
        let (send, mut confirmed) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let http = http.clone();
            let base = base.clone();
            let send = send.clone();
            let first = user;
            user += 10_000;
            tasks.push(tokio::spawn(async move {
                for user in first..first + 10_000 {
                    let sent = http
                        .post(format!("{base}/sales/1/buy"))
                        .json(&json!({"user": user, "qty": 1, "key": 1}))
                        .send()
                        .await;
                    let Ok(response) = sent else { return };
                    if response.status() == StatusCode::OK {
                        let Ok(body) = response.json::<Value>().await else {
                            return;
                        };
                        let _ = send.send((body["order"].as_u64().unwrap(), user));
                    }
                }
            }));
        }
        drop(send);
        let mut this_cycle = 0;
        while this_cycle < 60 {
            match tokio::time::timeout(Duration::from_secs(30), confirmed.recv()).await {
                Ok(Some(order)) => {
                    answered.push(order);
                    this_cycle += 1;
                }
                _ => break,
            }
        }
        server.kill();
        for task in tasks {
            let _ = task.await;
        }
        while let Ok(order) = confirmed.try_recv() {
            answered.push(order);
        }
    }
    assert!(
        answered.len() >= 60,
        "the load ran: {} orders",
        answered.len()
    );
    let server = serve(&args);
    for &(order, user) in &answered {
        let (status, view) = call(http.get(server.url(&format!("/orders/{order}")))).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "order {order} was answered 200 and is gone: {view}"
        );
        assert_eq!(view["user"].as_u64(), Some(user), "{view}");
    }
    let (_, sale) = call(http.get(server.url("/sales/1"))).await;
    let held = sale["held"].as_u64().unwrap();
    let available = sale["available"].as_u64().unwrap();
    assert_eq!(held + available, STOCK, "never oversold: {sale}");
    assert!(held >= answered.len() as u64, "{sale}");
    let (_, feed) = call(
        http.get(server.url("/orders/events?limit=10000&wait_ms=0"))
            .bearer_auth("operator-token-16"),
    )
    .await;
    assert_eq!(
        feed["events"].as_array().unwrap().len() as u64,
        held,
        "one confirmed event per order"
    );
    server.terminate(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_buyers_and_an_opening_draw_get_their_answers() {
    let dir = scratch("waiting");
    let catalog = write_catalog(
        &dir,
        r#"
[[sku]]
id = 1
stock = 1
limit = 1
waitlist = 5

[[sku]]
id = 2
stock = 3
limit = 1
policy = "opening-draw"
window = "3s"
seed = 9
"#,
    );
    let server = serve(&["--in-memory", "--catalog", &catalog]);
    let http = client();
    let (status, first) = buy(&http, &server, "1", json!({"user": 1, "qty": 1, "key": 1})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, sold) = buy(&http, &server, "1", json!({"user": 2, "qty": 1, "key": 1})).await;
    assert_eq!(
        (status, sold["reason"].as_str()),
        (StatusCode::CONFLICT, Some("sold_out"))
    );
    // Buyer 2 waits for a unit; the first order's cancellation gives it one.
    let waiting = {
        let http = http.clone();
        let url = server.url("/sales/1/buy");
        tokio::spawn(async move {
            call(
                http.post(url)
                    .json(&json!({"user": 2, "qty": 1, "key": 2, "wait": true})),
            )
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, sale) = call(http.get(server.url("/sales/1"))).await;
        if sale["waiting"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the buyer never joined the waitlist: {sale}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let order = first["order"].as_u64().unwrap();
    assert_eq!(
        call(http.post(server.url(&format!("/orders/{order}/cancel"))))
            .await
            .0,
        StatusCode::OK
    );
    let (status, filled) = waiting.await.unwrap();
    assert_eq!(
        (status, filled["user"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{filled}"
    );

    // Six buyers press inside the draw's window; three win, three are told sold out.
    let presses: Vec<_> = (10..16)
        .map(|user| {
            let http = http.clone();
            let url = server.url("/sales/2/buy");
            tokio::spawn(async move {
                call(
                    http.post(url)
                        .json(&json!({"user": user, "qty": 1, "key": 1})),
                )
                .await
            })
        })
        .collect();
    let mut won = 0;
    for press in presses {
        let (status, answer) = press.await.unwrap();
        match status {
            StatusCode::OK => won += 1,
            StatusCode::CONFLICT => assert_eq!(answer["reason"], "sold_out", "{answer}"),
            other => panic!("{other}: {answer}"),
        }
    }
    assert_eq!(won, 3, "the draw sells exactly the stock");
    server.terminate(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
}
