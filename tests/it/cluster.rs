//! Several Herve nodes sharing one PostgreSQL: a real server started by the test, real
//! nodes over real TCP (in-process, or the binary where a node must be killed).

use std::time::{Duration, Instant};

use crate::postgres::Postgres;
use crate::support::*;

/// Starts a node named `name` on `postgres`.
async fn node(postgres: &Postgres, name: &str) -> TestHerve {
    let url = postgres.url();
    let name = name.to_owned();
    TestHerve::start_with(move |config| {
        config.database_url = Some(url);
        config.node_name = Some(name);
        config.failover_s = 3;
    })
    .await
}

/// How long until `path` answers `status` through `client`, polling; panics after
/// `within`.
async fn until_status(client: &HttpClient, path: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let reply = client.get(path).await;
        if reply.status == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{path} still answers {} ({}) after {within:?}",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_node_is_routed_by_every_node_within_a_second() {
    let postgres = Postgres::start();
    let a = node(&postgres, "a").await;
    let b = node(&postgres, "b").await;
    let c = node(&postgres, "c").await;

    // Registered and started through A: B and C route it within a second.
    let uuid = a.register_ok("pinger", "ping").await;
    a.start(&uuid)
        .await
        .expect(200, "The service has successfully started.");
    let path = format!("/{uuid}/ping");
    for other in [&b, &c] {
        let took = until_status(other, &path, 200, Duration::from_secs(1)).await;
        println!("propagated to a node in {took:?}");
        assert_eq!(other.get("/pinger/ping").await.status, 200);
        let shown = other.admin_get(&format!("/services/{uuid}")).await.json();
        assert_eq!(shown["data"]["status"], "running", "{shown}");
    }

    // An edit through B (a host route) is routed by C and A.
    b.patch(&uuid, &[("hosts", "app.cluster.test")])
        .await
        .expect(200, "The service has been successfully updated.");
    for other in [&a, &c] {
        let started = Instant::now();
        loop {
            let reply = other
                .send(
                    hyper::Method::GET,
                    "/ping",
                    Auth::None,
                    &[("host", "app.cluster.test")],
                    "",
                )
                .await;
            if reply.status == 200 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(1), "the host route did not reach a node");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // Stopped through C: no node routes it any more.
    c.stop_service(&uuid)
        .await
        .expect(200, "The service has successfully stopped.");
    for other in [&a, &b] {
        until_status(other, &path, 404, Duration::from_secs(1)).await;
        let shown = other.admin_get(&format!("/services/{uuid}")).await.json();
        assert_eq!(shown["data"]["status"], "stopped", "{shown}");
    }

    // Unregistered through A: gone everywhere.
    let gone = a.unregister(&uuid).await;
    assert_eq!(gone.status, 200, "{}", gone.text());
    for other in [&b, &c] {
        let started = Instant::now();
        while other.admin_get(&format!("/services/{uuid}")).await.status != 404 {
            assert!(started.elapsed() < Duration::from_secs(1), "the service is still known");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // Each node shows the cluster: three nodes, alive, at the same revision.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cluster = b.admin_get("/cluster").await;
    assert_eq!(cluster.status, 200, "{}", cluster.text());
    let view = cluster.json();
    assert_eq!(view["data"]["node"], "b", "{view}");
    let nodes = view["data"]["nodes"].as_array().expect("nodes").clone();
    let mut names: Vec<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["a", "b", "c"], "{view}");
    assert!(nodes.iter().all(|n| n["alive"] == true), "{view}");
    for node in [a, b, c] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_herve_has_no_cluster() {
    let herve = TestHerve::start().await;
    herve
        .admin_get("/cluster")
        .await
        .expect(
            404,
            "This Herve runs alone, on its own SQLite database: there is no cluster. \
             Give every node the same HERVE_DATABASE_URL to run several.",
        );
}
