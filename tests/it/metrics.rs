//! `GET /metrics`: checked by Prometheus' own `promtool`, and exact counts under known
//! traffic.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::{HttpClient, TestHerve};

/// The value of the sample `name{labels}` (labels in the order Herve writes them).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

async fn scrape(herve: &HttpClient) -> String {
    let reply = herve.admin_get("/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    reply.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_known_traffic_and_promtool_accepts_the_output() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let metrics_addr = listener.local_addr().expect("addr");
    drop(listener);
    let herve = TestHerve::start_with(|config| config.metrics_addr = Some(metrics_addr)).await;
    let echo = herve.running("talk", "echo").await;
    let ping = herve.running("pong", "ping").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("app.py");
    std::fs::write(&app, crate::operations::PID_APP).expect("write");
    herve
        .running_with(
            "copies",
            "process",
            &[
                ("command", &format!("python3 {}", app.display())),
                ("replicas", "2"),
            ],
        )
        .await;
    for _ in 0..5 {
        assert_eq!(
            herve
                .post_form(&format!("/{echo}/echo"), &[("a", "b")])
                .await
                .status,
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(herve.get(&format!("/{ping}/ping")).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(herve.get("/pong/nothing-here").await.status, 404);
    }
    for _ in 0..4 {
        assert_eq!(herve.get("/copies/").await.status, 200);
    }
    let text = scrape(&herve).await;
    let series = |s: &str| sample(&text, s);
    assert_eq!(
        series(r#"herve_requests_total{service="talk",method="POST",class="2xx"}"#),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        series(r#"herve_requests_total{service="pong",method="GET",class="2xx"}"#),
        Some(3.0)
    );
    assert_eq!(
        series(r#"herve_requests_total{service="pong",method="GET",class="4xx"}"#),
        Some(2.0)
    );
    assert_eq!(
        series(r#"herve_requests_total{service="copies",method="GET",class="2xx"}"#),
        Some(4.0)
    );
    assert_eq!(
        series(r#"herve_request_duration_seconds_count{service="talk"}"#),
        Some(5.0)
    );
    assert_eq!(
        series(r#"herve_request_duration_seconds_bucket{service="pong",le="+Inf"}"#),
        Some(5.0)
    );
    assert_eq!(
        series(r#"herve_requests_in_flight{service="talk"}"#),
        Some(0.0)
    );
    assert_eq!(series(r#"herve_services{status="running"}"#), Some(3.0));
    assert_eq!(
        series(r#"herve_service_up{service="copies",type="process"}"#),
        Some(1.0)
    );
    assert_eq!(
        series(r#"herve_process_copies{service="copies",state="running"}"#),
        Some(2.0)
    );
    assert_eq!(
        series(r#"herve_process_restarts_total{service="copies",copy="2"}"#),
        Some(0.0)
    );
    assert!(series("herve_connections_accepted_total").is_some_and(|n| n >= 1.0));
    assert!(text.contains(&format!(
        "herve_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    // Never a path in a label: a request to a made-up path adds no series.
    assert!(!text.contains("nothing-here"));

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; .ci/run installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let checked = promtool.wait_with_output().expect("promtool runs");
    assert!(
        checked.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // Upstreams: the copies' health and load, and a request held by a silent upstream
    // counted in flight on it until the upstream lets go.
    assert_eq!(
        text.lines()
            .filter(
                |l| l.starts_with(r#"herve_upstream_healthy{service="copies","#)
                    && l.ends_with(" 1")
            )
            .count(),
        2,
        "{text}"
    );
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((stream, _)) = silent.accept() {
            let _ = held_tx.send(stream);
        }
    });
    herve
        .running_with(
            "slow",
            "proxy",
            &[("upstream", &format!("http://127.0.0.1:{silent_port}"))],
        )
        .await;
    let waiting = {
        let client = HttpClient::new(herve.addr);
        tokio::spawn(async move { client.get("/slow/").await.status })
    };
    let series = format!(
        r#"herve_upstream_in_flight{{service="slow",upstream="http://127.0.0.1:{silent_port}"}}"#
    );
    let mut seen = None;
    for _ in 0..100 {
        seen = sample(&scrape(&herve).await, &series);
        if seen == Some(1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen,
        Some(1.0),
        "the held request is in flight on its upstream"
    );
    drop(held_rx.recv().expect("the upstream got the request"));
    assert_eq!(waiting.await.expect("request"), 502);
    assert_eq!(sample(&scrape(&herve).await, &series), Some(0.0));

    // Refusals are counted: a body over the limit.
    let big = vec![b'x'; 11 * 1024 * 1024];
    let reply = herve
        .send(
            hyper::Method::POST,
            &format!("/{echo}/echo"),
            crate::support::Auth::None,
            &[],
            big,
        )
        .await;
    assert_eq!(reply.status, 413);
    let text = scrape(&herve).await;
    assert_eq!(
        sample(&text, r#"herve_refused_total{status="413"}"#),
        Some(1.0),
        "{text}"
    );

    // The admin API's /metrics needs credentials; the metrics address does not, and
    // serves nothing else.
    assert_eq!(herve.get("/metrics").await.status, 401);
    let scraper = HttpClient::new(metrics_addr);
    let open = scraper.get("/metrics").await;
    assert_eq!(open.status, 200);
    assert!(open.text().contains("herve_requests_total"));
    assert_eq!(scraper.get("/services").await.status, 404);
    herve.stop().await;
}
