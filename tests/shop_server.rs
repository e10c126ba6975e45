//! The example shop server (`examples/shop_server`) driven over real HTTP with reqwest: every
//! status code it answers, `GET /sales/{sku}` and `GET /metrics`.
#![cfg(not(loom))]

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use flashsale::{Engine, Order};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[path = "../examples/shop_server/shop.rs"]
#[allow(dead_code)]
mod shop;

/// A shop served on a free port of 127.0.0.1.
struct Served {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

async fn serve(shop: Arc<shop::Shop>) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, shop::router(shop))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Served {
        base: format!("http://{addr}"),
        stop,
        server,
    }
}

impl Served {
    /// Stops serving, then shuts the engine down: its report.
    async fn shut_down(self, shop: Arc<shop::Shop>) -> flashsale::Report {
        self.stop.send(()).unwrap();
        self.server.await.unwrap();
        tokio::task::spawn_blocking(move || shop.shutdown())
            .await
            .unwrap()
            .expect("nothing else holds the shop")
    }
}

async fn post(http: &reqwest::Client, url: &str, body: &str) -> (StatusCode, Value) {
    let response = http.post(url).body(body.to_owned()).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

fn buy_body(user: u64, qty: u32, key: u64) -> String {
    json!({ "user": user, "qty": qty, "key": key }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_over_http() {
    // SKU 1: one unit. SKUs 1 and 2 share a limit of 2 per buyer.
    let engine = Engine::builder(shop::default_catalog(1, 2).unwrap())
        .start()
        .unwrap();
    let shop = shop::Shop::new(engine, 2).unwrap();
    let served = serve(shop.clone()).await;
    let base = served.base.clone();
    let http = reqwest::Client::new();
    let buy = |sku: &str| format!("{base}/sales/{sku}/buy");

    // 200: the order.
    let (status, order) = post(&http, &buy("1"), &buy_body(7, 1, 100)).await;
    assert_eq!(status, StatusCode::OK, "{order}");
    assert_eq!(
        (
            order["sku"].as_u64(),
            order["user"].as_u64(),
            order["qty"].as_u64()
        ),
        (Some(1), Some(7), Some(1))
    );
    let order_id = order["order"].as_u64().expect("an order id");

    // 409: a retry with the same key names the existing order; others are sold out or
    // over their limit. 400 for a quantity above the engine's max_quantity (100). 425
    // (with how long until it opens), 403, 404.
    let mut answers = Vec::new();
    for (sku, (user, qty, key), status, field, value) in [
        ("1", (7, 1, 100), 409, "reason", "duplicate"),
        ("1", (8, 1, 101), 409, "reason", "sold_out"),
        ("2", (7, 2, 102), 409, "reason", "user_limit"),
        ("2", (8, 501, 103), 400, "field", "qty"),
        ("3", (7, 1, 104), 425, "reason", "not_open_yet"),
        ("4", (7, 1, 105), 403, "reason", "closed"),
        ("99", (7, 1, 106), 404, "reason", "unknown_sku"),
    ] {
        let body = buy_body(user, qty, key);
        let (got, answer) = post(&http, &buy(sku), &body).await;
        assert_eq!(
            (got.as_u16(), answer[field].as_str()),
            (status, Some(value)),
            "{body}: {answer}"
        );
        answers.push(answer);
    }
    assert_eq!(answers[0]["order"].as_u64(), Some(order_id));
    assert!(answers[4]["opens_in_ms"].as_u64().unwrap() > 3_000_000);

    // 400, naming the field.
    // Each answer names the field, and its message says what is wrong with it.
    for (sku, body, field, says) in [
        (
            "2",
            r#"{"user": 1, "qty": 1}"#,
            "key",
            r#"missing field "key""#,
        ),
        (
            "2",
            r#"{"qty": 1, "key": 1}"#,
            "user",
            r#"missing field "user""#,
        ),
        (
            "2",
            r#"{"user": 1, "qty": "two", "key": 1}"#,
            "qty",
            r#""qty" must be"#,
        ),
        (
            "2",
            r#"{"user": -1, "qty": 1, "key": 1}"#,
            "user",
            r#""user" must be"#,
        ),
        (
            "2",
            r#"{"user": 1, "qty": 4294967296, "key": 1}"#,
            "qty",
            r#""qty" must be"#,
        ),
        (
            "2",
            r#"{"user": 1, "qty": 0, "key": 1}"#,
            "qty",
            "qty must be at least 1",
        ),
        (
            "2",
            r#"{"user": 1, "qty": 1, "key": 1, "coupon": 5}"#,
            "body",
            r#"unknown field "coupon""#,
        ),
        ("2", r#"[1, 1, 1]"#, "body", "must be a JSON object"),
        ("2", "user=1&qty=1", "body", "not JSON"),
        (
            "two",
            r#"{"user": 1, "qty": 1, "key": 1}"#,
            "sku",
            r#"not "two""#,
        ),
    ] {
        let (status, answer) = post(&http, &buy(sku), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["field"].as_str(), Some(field), "{body}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{body}: {message:?} should say {says:?}"
        );
    }

    // GET /sales/{sku}: stock and state.
    let sale = get_json(&http, &format!("{base}/sales/1")).await;
    assert_eq!(
        (sale["stock"].as_u64(), sale["available"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(sale["state"].as_str(), Some("sold_out"));
    let sale = get_json(&http, &format!("{base}/sales/3")).await;
    assert_eq!(sale["state"].as_str(), Some("upcoming"));
    let sale = get_json(&http, &format!("{base}/sales/4")).await;
    assert_eq!(sale["state"].as_str(), Some("closed"));
    let missing = http.get(format!("{base}/sales/99")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // GET /metrics: Prometheus text, counting what was answered above.
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
    };
    let answers = "flashsale_http_buy_answers_total";
    assert_eq!(
        value(&format!(r#"{answers}{{status="200",reason="confirmed"}}"#)),
        1.0
    );
    assert_eq!(
        value(&format!(r#"{answers}{{status="409",reason="duplicate"}}"#)),
        1.0
    );
    assert_eq!(
        value(&format!(r#"{answers}{{status="409",reason="sold_out"}}"#)),
        1.0
    );
    assert_eq!(
        value(&format!(
            r#"{answers}{{status="400",reason="invalid_quantity"}}"#
        )),
        2.0
    );
    assert_eq!(
        value(&format!(
            r#"{answers}{{status="400",reason="bad_request"}}"#
        )),
        9.0
    );
    assert_eq!(value("flashsale_engine_buy_seconds_count"), 9.0);
    assert!(value(r#"flashsale_engine_buy_seconds{quantile="0.5"}"#) > 0.0);
    assert_eq!(value(r#"flashsale_client_lane_in_flight{lane="1"}"#), 0.0);
    assert_eq!(value(r#"flashsale_sku_available{sku="2"}"#), 500.0);
    assert_eq!(value("flashsale_confirmed_orders_total"), 1.0);

    // The engine's own count: the 9 buys that reached it (the 8 malformed bodies and the
    // bad SKU path did not), 1 confirmed.
    drop(http);
    let report = served.shut_down(shop).await;
    assert_eq!(report.outcomes(), 9);
    assert_eq!(report.confirmed_orders, 1);
}

/// 429: the order sink holds the shard inside a confirmation, so the only lane's only ring
/// slot stays taken; the next buy is answered at once, with `Retry-After`, and reserves
/// nothing. Then the first buy completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_engine_answers_429_with_retry_after() {
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let hooks = Arc::new(std::sync::Mutex::new(Some((entered_tx, release_rx))));
    let engine = Engine::builder(shop::default_catalog(10, 2).unwrap())
        .ring_capacity(1)
        .order_sink(move |_| {
            let (entered, release) = hooks.lock().unwrap().take().expect("one shard");
            move |_: &Order| {
                let _ = entered.send(());
                let _ = release.recv_timeout(Duration::from_secs(30));
            }
        })
        .start()
        .unwrap();
    let shop = shop::Shop::new(engine, 1).unwrap();
    let served = serve(shop.clone()).await;
    let base = served.base.clone();
    let http = reqwest::Client::new();
    let url = format!("{base}/sales/1/buy");

    let first = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move { post(&http, &url, &buy_body(1, 1, 1)).await }
    });
    tokio::task::spawn_blocking(move || entered_rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the first buy reached the order sink");

    let response = http
        .post(&url)
        .body(buy_body(2, 1, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"].as_str(), Some("busy"));

    release_tx.send(()).unwrap();
    let (status, order) = first.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{order}");
    // Nothing was reserved for the refused buy: it can be sent again, and succeeds.
    release_tx.send(()).unwrap();
    let (status, order) = post(&http, &url, &buy_body(2, 1, 2)).await;
    assert_eq!((status, order["user"].as_u64()), (StatusCode::OK, Some(2)));
    let sale = get_json(&http, &format!("{base}/sales/1")).await;
    assert_eq!(sale["available"].as_u64(), Some(8));
    drop(http);
    let report = served.shut_down(shop).await;
    assert_eq!(report.confirmed_orders, 2);
    assert_eq!(report.refusals.busy, 1);
}
