//! Several Herve nodes sharing one PostgreSQL: a real server started by the test, real
//! nodes over real TCP (in-process, or the binary where a node must be killed).

use std::time::{Duration, Instant};

use crate::postgres::Postgres;
use crate::support::*;

/// Starts a node named `name` on `postgres`.
async fn node(postgres: &Postgres, name: &str) -> TestHerve {
    node_with(postgres, name, |_| {}).await
}

/// Starts a node named `name` on `postgres`, with settings of its own.
async fn node_with(
    postgres: &Postgres,
    name: &str,
    tune: impl FnOnce(&mut herve::Config),
) -> TestHerve {
    let url = postgres.url();
    let name = name.to_owned();
    TestHerve::start_with(move |config| {
        config.database_url = Some(url);
        config.node_name = Some(name);
        config.failover_s = 3;
        tune(config);
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
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "the host route did not reach a node"
            );
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
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "the service is still known"
            );
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
    herve.admin_get("/cluster").await.expect(
        404,
        "This Herve runs alone, on its own SQLite database: there is no cluster. \
             Give every node the same HERVE_DATABASE_URL to run several.",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_altered_by_hand_is_an_error_not_a_crash() {
    let postgres = Postgres::start();
    let a = node(&postgres, "a").await;
    assert_eq!(a.admin_get("/cluster").await.status, 200);
    postgres.sql("ALTER TABLE herve_nodes ALTER COLUMN started_at TYPE TEXT");
    a.admin_get("/cluster")
        .await
        .expect(500, "The cluster's nodes could not be read.");
    // The node is whole: it serves, and answers the same again.
    assert_eq!(a.get("/health").await.status, 200);
    assert_eq!(a.admin_get("/cluster").await.status, 500);
    a.stop().await;
}

/// Starts the binary as node `name` on `postgres`, in `dir`.
fn bin_node(postgres: &Postgres, dir: &std::path::Path, name: &str) -> BinHerve {
    std::fs::create_dir_all(dir).expect("node dir");
    BinHerve::spawn(
        dir,
        &[
            ("HERVE_DATABASE_URL", &postgres.url()),
            ("HERVE_NODE_NAME", name),
            ("HERVE_ACCESS_LOG", "false"),
        ],
    )
}

/// The pid the program of `uuid` reports through `client`.
async fn pid_through(client: &HttpClient, uuid: &str) -> Option<u64> {
    let reply = client.get(&format!("/{uuid}/")).await;
    (reply.status == 200)
        .then(|| reply.json()["pid"].as_u64())
        .flatten()
}

/// Waits until the program of `uuid` runs as another process than `before`, checking
/// all along that it never runs twice; its pids then.
async fn moved_program(uuid: &str, before: &[u32], within: Duration) -> Vec<u32> {
    let started = Instant::now();
    loop {
        let now = crate::process_type::processes_of(uuid);
        assert!(now.len() <= 1, "two programs at once: {now:?}");
        if now.len() == 1 && now != before {
            return now;
        }
        assert!(
            started.elapsed() < within,
            "the program did not move: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `client` reaches the program whose pid is `pid`.
async fn reaches(client: &HttpClient, uuid: &str, pid: u32, within: Duration) {
    let started = Instant::now();
    while pid_through(client, uuid).await != Some(u64::from(pid)) {
        assert!(
            started.elapsed() < within,
            "{} does not reach the program",
            client.addr
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_runs_on_one_node_and_moves_when_that_node_is_killed() {
    let postgres = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = crate::process_type::write_app(dir.path());
    let mut nodes: Vec<Option<BinHerve>> = ["a", "b", "c"]
        .iter()
        .map(|name| Some(bin_node(&postgres, &dir.path().join(name), name)))
        .collect();
    let a = nodes[0].as_ref().expect("a").client();
    let uuid =
        crate::process_type::register_process(&a, "app", &[("command", &format!("python3 {app}"))])
            .await
            .expect("registered");
    a.start(&uuid)
        .await
        .expect(200, "The service has successfully started.");

    // One program on the machine, reached through every node.
    let pids = crate::process_type::processes_of(&uuid);
    assert_eq!(
        pids.len(),
        1,
        "{pids:?} {} {}",
        a.admin_get(&format!("/services/{uuid}")).await.text(),
        nodes[0].as_ref().expect("a").stdout()
    );
    for node in nodes.iter().flatten() {
        let client = node.client();
        let started = Instant::now();
        loop {
            if let Some(pid) = pid_through(&client, &uuid).await {
                assert_eq!(pid, u64::from(pids[0]));
                break;
            }
            if started.elapsed() > Duration::from_secs(2) {
                let reply = client.get(&format!("/{uuid}/")).await;
                panic!(
                    "{} does not reach the program: {} {}\n{}\n{}",
                    node.addr,
                    reply.status,
                    reply.text(),
                    node.stdout(),
                    node.stderr.lock().expect("stderr")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        crate::process_type::processes_of(&uuid),
        pids,
        "a second node started it"
    );

    // The node that runs it says so.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let view = a.admin_get("/cluster").await.json();
    let holders: Vec<String> = view["data"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|node| {
            node["services"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["uuid"] == uuid.as_str() && s["runs_on"] == "here")
            })
        })
        .filter_map(|node| node["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(holders, ["a"], "{view}");
    // Every node counts it among what it runs (there, or forwarded).
    let shown = view["data"]["nodes"].as_array().expect("nodes");
    assert_eq!(shown.len(), 3, "{view}");
    assert!(shown.iter().all(|node| node["running"] == 1), "{view}");

    // Its logs and reloads are the holder's; another node says where it runs.
    let b = nodes[1].as_ref().expect("b").client();
    let elsewhere = b.admin_get(&format!("/services/{uuid}/logs")).await;
    assert_eq!(elsewhere.status, 409, "{}", elsewhere.text());
    assert!(
        elsewhere.message().contains("runs on the node 'a'"),
        "{}",
        elsewhere.text()
    );
    assert_eq!(
        a.admin_get(&format!("/services/{uuid}/logs")).await.status,
        200
    );
    // The CLI works against any node.
    let env = [
        ("HERVE_URL", format!("http://{}", b.addr)),
        ("HERVE_ADMIN_ID", ADMIN_ID.to_owned()),
        ("HERVE_ADMIN_SECRET", ADMIN_SECRET.to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let listed = crate::cli::cli(dir.path(), &env, &["ls"]).await;
    assert!(listed.ok().contains("app"), "{}", listed.stdout);

    // Killed: another node starts it within 10 s, and never two at once.
    let killed_at = Instant::now();
    let mut holder = nodes[0].take().expect("a");
    holder.signal(libc::SIGKILL);
    holder.wait(Duration::from_secs(10));
    let moved = moved_program(&uuid, &pids, Duration::from_secs(10)).await;
    println!("started elsewhere {:?} after the kill", killed_at.elapsed());
    for node in nodes.iter().flatten() {
        reaches(&node.client(), &uuid, moved[0], Duration::from_secs(3)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(crate::process_type::processes_of(&uuid), moved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_database_nodes_serve_on_refuse_changes_and_catch_up() {
    let postgres = Postgres::start();
    let a = node(&postgres, "a").await;
    let b = node(&postgres, "b").await;
    let uuid = a.register_ok("steady", "ping").await;
    a.start(&uuid)
        .await
        .expect(200, "The service has successfully started.");
    let path = format!("/{uuid}/ping");
    until_status(&b, &path, 200, Duration::from_secs(1)).await;

    postgres.stop();
    // Traffic goes on, reads too; changes are refused with a clear reason.
    for _ in 0..3 {
        for node in [&a, &b] {
            assert_eq!(node.get(&path).await.status, 200);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(b.admin_get(&format!("/services/{uuid}")).await.status, 200);
    let refused = b.register("during", "ping").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused
            .message()
            .contains("the shared database cannot be reached"),
        "{}",
        refused.text()
    );
    let refused = a.stop_service(&uuid).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(a.get(&path).await.status, 200, "a refused stop stopped it");
    assert_eq!(a.admin_get("/cluster").await.status, 503);

    // Back: changes are accepted again and reach the other node.
    postgres.restart();
    let started = Instant::now();
    let later = loop {
        let reply = b.register("after", "ping").await;
        if reply.status == 201 {
            break reply.json()["data"]["uuid"]
                .as_str()
                .expect("uuid")
                .to_owned();
        }
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "changes still refused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    b.start(&later)
        .await
        .expect(200, "The service has successfully started.");
    until_status(&a, &format!("/{later}/ping"), 200, Duration::from_secs(5)).await;
    // Nothing acknowledged before the outage was lost.
    assert_eq!(
        postgres.sql("SELECT count(*) FROM services WHERE status = 'running'"),
        "2"
    );
    a.stop().await;
    b.stop().await;
}

/// A node "a" with 4 s leases, and a program registered on it that ignores SIGTERM
/// and may take a minute to stop (`stop_timeout_ms=60000`), with `fields` besides.
/// The program is `python3 <app> stubborn`, in `dir`.
struct Stubborn {
    postgres: Postgres,
    dir: tempfile::TempDir,
    a: TestHerve,
    uuid: String,
}

impl Stubborn {
    async fn register(name: &str, fields: &[(&str, &str)]) -> Stubborn {
        let postgres = Postgres::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let app = crate::process_type::write_app(dir.path());
        let a = node_with(&postgres, "a", |config| config.failover_s = 6).await;
        let command = format!("python3 {app} stubborn");
        let mut all = vec![("command", command.as_str()), ("stop_timeout_ms", "60000")];
        all.extend_from_slice(fields);
        let uuid = crate::process_type::register_process(&a, name, &all)
            .await
            .expect("registered");
        Stubborn {
            postgres,
            dir,
            a,
            uuid,
        }
    }

    fn processes(&self) -> Vec<u32> {
        crate::process_type::processes_of(&self.uuid)
    }

    /// Waits until the program is gone, at most a lease (4 s) after `lost`, when the
    /// database went away: the last renewal was sent before, so its lease runs out by
    /// then at the latest. How long it took.
    async fn killed_within_the_lease(&self, lost: Instant) -> Duration {
        crate::process_type::wait_for(
            "every process of the program to be killed",
            Duration::from_secs(4).saturating_sub(lost.elapsed()),
            async || self.processes().is_empty(),
        )
        .await;
        let killed = lost.elapsed();
        println!("killed {killed:?} after the database went away");
        killed
    }

    /// Stops the node, killing the program meanwhile: a clean stop gives it its minute.
    async fn stop(self) {
        let uuid = self.uuid;
        let stopping = tokio::spawn(self.a.stop());
        while !stopping.is_finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for pid in crate::process_type::processes_of(&uuid) {
                // SAFETY: a plain signal to a process of this test's own.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        stopping.await.expect("stopped");
        assert!(crate::process_type::processes_of(&uuid).is_empty());
        drop((self.postgres, self.dir));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_the_database_kills_its_program_before_the_lease_runs_out() {
    // A node cut off from the database must not give its program the minute it asks
    // for, or another node could start it while it still runs.
    let stubborn = Stubborn::register("stubborn", &[]).await;
    let (a, uuid) = (&stubborn.a, &stubborn.uuid);
    a.start(uuid)
        .await
        .expect(200, "The service has successfully started.");
    assert_eq!(stubborn.processes().len(), 1);

    let lost = Instant::now();
    stubborn.postgres.stop();
    let killed = stubborn.killed_within_the_lease(lost).await;
    // Not before half the lease: a short outage costs nothing.
    assert!(killed >= Duration::from_secs(2), "{killed:?}");
    crate::process_type::wait_for("the service to fail", Duration::from_secs(2), async || {
        let shown = a.admin_get(&format!("/services/{uuid}")).await.json();
        shown["data"]["status"] == "failed"
    })
    .await;
    // Nor can it be started while the database is away.
    let refused = a.start(uuid).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused
            .message()
            .contains("the shared database cannot be reached"),
        "{}",
        refused.text()
    );

    // Back: it runs again (here, the only node).
    stubborn.postgres.restart();
    crate::process_type::wait_for("the program again", Duration::from_secs(15), async || {
        stubborn.processes().len() == 1
    })
    .await;
    stubborn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_does_not_wait_for_a_stop_stuck_on_an_unanswering_database() {
    // The database stops answering (frozen, connections open): a stop asked then holds
    // the service while it waits on the database, and the program must still be gone
    // before its lease runs out.
    let stubborn = Stubborn::register("stuck", &[]).await;
    stubborn
        .a
        .start(&stubborn.uuid)
        .await
        .expect(200, "The service has successfully started.");
    assert_eq!(stubborn.processes().len(), 1);

    let lost = Instant::now();
    stubborn.postgres.freeze();
    let stopping = {
        let client = stubborn.a.client.clone();
        let uuid = stubborn.uuid.clone();
        tokio::spawn(async move { client.stop_service(&uuid).await.status })
    };
    stubborn.killed_within_the_lease(lost).await;
    stubborn.postgres.thaw();
    // Saved once the database answers again, or refused after the call's deadline.
    let stopped = stopping.await.expect("stop");
    assert!(matches!(stopped.as_u16(), 200 | 503), "{stopped}");
    stubborn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_kills_a_program_that_is_still_starting() {
    // Started, never ready, deaf to SIGTERM: a start given up waits out the stop
    // timeout, unless the program must be gone before its lease runs out.
    let never = std::env::temp_dir().join(format!("herve-never-{}", std::process::id()));
    let ready_file = format!("READY_FILE={}", never.display());
    let stubborn = Stubborn::register(
        "slow",
        &[
            ("health_path", "/ready"),
            ("env", &ready_file),
            ("ready_timeout_ms", "60000"),
        ],
    )
    .await;
    let starting = {
        let client = stubborn.a.client.clone();
        let uuid = stubborn.uuid.clone();
        tokio::spawn(async move { client.start(&uuid).await.status })
    };
    crate::process_type::wait_for("the program to run", Duration::from_secs(5), async || {
        stubborn.processes().len() == 1
    })
    .await;

    let lost = Instant::now();
    stubborn.postgres.stop();
    stubborn.killed_within_the_lease(lost).await;
    let status = starting.await.expect("start");
    assert!(status.is_server_error(), "{status}");
    stubborn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_kills_every_copy_of_a_program_being_reloaded() {
    // A reload holds the program's copies while its new copy gets ready (never, here):
    // a fence must not wait for it.
    let flag = tempfile::NamedTempFile::new().expect("flag");
    let ready_file = format!("READY_FILE={}", flag.path().display());
    let stubborn = Stubborn::register(
        "reloading",
        &[
            ("health_path", "/ready"),
            ("env", &ready_file),
            ("ready_timeout_ms", "60000"),
        ],
    )
    .await;
    stubborn
        .a
        .start(&stubborn.uuid)
        .await
        .expect(200, "The service has successfully started.");
    // Copies started from now on never get ready.
    flag.close().expect("unflag");
    let reloading = {
        let client = stubborn.a.client.clone();
        let uuid = stubborn.uuid.clone();
        tokio::spawn(async move {
            client
                .admin_post(&format!("/services/{uuid}/reload"))
                .await
                .status
        })
    };
    crate::process_type::wait_for("the new copy", Duration::from_secs(5), async || {
        stubborn.processes().len() == 2
    })
    .await;

    let lost = Instant::now();
    stubborn.postgres.stop();
    stubborn.killed_within_the_lease(lost).await;
    let status = reloading.await.expect("reload");
    assert!(status.is_server_error(), "{status}");
    stubborn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_of_random_nodes_lose_no_acknowledged_change() {
    use std::sync::{Arc, Mutex};
    let postgres = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let names = ["a", "b", "c"];
    let mut nodes: Vec<BinHerve> = names
        .iter()
        .map(|name| bin_node(&postgres, &dir.path().join(name), name))
        .collect();
    let addrs = Arc::new(Mutex::new(nodes.iter().map(|n| n.addr).collect::<Vec<_>>()));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (addrs, acknowledged, done) = (
            Arc::clone(&addrs),
            Arc::clone(&acknowledged),
            Arc::clone(&done),
        );
        tokio::spawn(async move {
            let mut n = 0usize;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let addr = {
                    let addrs = addrs.lock().expect("addrs");
                    addrs[n % addrs.len()]
                };
                let name = format!("s{n}");
                let client = HttpClient::new(addr);
                if let Some(reply) = client
                    .try_post_form("/services/register", &[("name", &name), ("type", "ping")])
                    .await
                {
                    if reply.status == 201 {
                        acknowledged.lock().expect("acked").push(name);
                    }
                }
            }
        })
    };
    // Each round kills a node picked by a small generator and starts it again.
    let mut seed = 0x9e37_79b9_u32;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let victim = seed as usize % nodes.len();
        nodes[victim].signal(libc::SIGKILL);
        nodes[victim].wait(Duration::from_secs(10));
        let name = names[victim];
        nodes[victim] = bin_node(&postgres, &dir.path().join(name), name);
        addrs.lock().expect("addrs")[victim] = nodes[victim].addr;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.expect("writer");
    let acknowledged = acknowledged.lock().expect("acked").clone();
    assert!(
        acknowledged.len() > 20,
        "too few changes went through: {}",
        acknowledged.len()
    );

    // Every acknowledged registration is in the database and known by every node.
    let stored = postgres.sql("SELECT name FROM services");
    let stored: std::collections::HashSet<&str> = stored.lines().collect();
    for name in &acknowledged {
        assert!(
            stored.contains(name.as_str()),
            "{name} was acknowledged and lost"
        );
    }
    for node in &nodes {
        let client = node.client();
        let started = Instant::now();
        loop {
            let listed: std::collections::HashSet<String> = client
                .list()
                .await
                .iter()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect();
            let missing: Vec<&String> = acknowledged
                .iter()
                .filter(|name| !listed.contains(*name))
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{} does not know {missing:?}",
                node.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "{} changes acknowledged across 20 kills",
        acknowledged.len()
    );
}

/// A urlencoded POST without credentials.
async fn post_anonymous(client: &HttpClient, path: &str, fields: &[(&str, &str)]) -> Reply {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    client
        .send(
            hyper::Method::POST,
            path,
            Auth::None,
            &[("content-type", "application/x-www-form-urlencoded")],
            body,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_accounts_are_shared_by_every_node() {
    let postgres = Postgres::start();
    let a = node(&postgres, "a").await;
    let c = node(&postgres, "c").await;

    // Data written through A is read, changed and listed through C.
    let notes = a
        .running_with(
            "notes",
            "models",
            &[("model", "note"), ("fields", "title:string:80:required")],
        )
        .await;
    until_status(&c, &format!("/{notes}/note"), 200, Duration::from_secs(1)).await;
    let created = post_anonymous(&a, &format!("/{notes}/note"), &[("title", "from a")]).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["data"]["id"].as_i64().expect("id");
    let read = c.get(&format!("/{notes}/note/{id}")).await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["data"]["title"], "from a");
    let second = post_anonymous(&c, &format!("/{notes}/note"), &[("title", "from c")]).await;
    assert_eq!(
        second.json()["data"]["id"],
        id + 1,
        "ids are the cluster's, not a node's"
    );
    let listed = a.get(&format!("/{notes}/note")).await.json();
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(2), "{listed}");

    // A token issued by A opens a service protected by the accounts through C.
    a.running("accounts", "auth").await;
    a.running_with("guarded", "ping", &[("protect", "auth:accounts")])
        .await;
    until_status(&c, "/guarded/ping", 401, Duration::from_secs(1)).await;
    let credentials = [("username", "ada"), ("password", "correct horse")];
    let signup = post_anonymous(&a, "/accounts/signup", &credentials).await;
    assert_eq!(signup.status, 201, "{}", signup.text());
    let login = post_anonymous(&a, "/accounts/login", &credentials).await;
    assert_eq!(login.status, 200, "{}", login.text());
    let token = login.json()["data"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let bearer = format!("Bearer {token}");
    let through_c = c
        .send(
            hyper::Method::GET,
            "/guarded/ping",
            Auth::Raw(&bearer),
            &[],
            "",
        )
        .await;
    assert_eq!(through_c.status, 200, "{}", through_c.text());
    // And a user who signed up through C logs in through A.
    let other = [("username", "bob"), ("password", "battery staple")];
    assert_eq!(
        post_anonymous(&c, "/accounts/signup", &other).await.status,
        201
    );
    assert_eq!(
        post_anonymous(&a, "/accounts/login", &other).await.status,
        200
    );
    a.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_uploaded_to_one_node_is_served_by_the_others() {
    use crate::tls_client::{client_config, handshake, presented, TestCa};
    let postgres = Postgres::start();
    let with_tls = |config: &mut herve::Config| config.tls_port = Some(0);
    let a = node_with(&postgres, "a", with_tls).await;
    let b = node_with(&postgres, "b", with_tls).await;
    let ca = TestCa::new("Herve cluster CA");
    let issued = ca.issue(&["shared.test"]);
    crate::tls::put_certificate(&a, "shared.test", &issued.bundle())
        .await
        .expect(200, "The certificate has been stored.");
    let tls = b.tls_addr.expect("tls");
    let started = Instant::now();
    loop {
        let stream = handshake(
            tls,
            "shared.test",
            client_config(ca.roots(), &[b"http/1.1"]),
        )
        .await;
        if let Ok(stream) = stream {
            assert_eq!(presented(&stream), issued.der);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "B does not serve the certificate"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let listed = b.admin_get("/certificates").await.json();
    assert!(
        listed["data"].as_array().is_some_and(|all| all
            .iter()
            .any(|c| c["host"] == "shared.test" && c["source"] == "upload")),
        "{listed}"
    );
    // Removed through B: A no longer serves it.
    let removed = b
        .send(
            hyper::Method::DELETE,
            "/certificates/shared.test",
            Auth::Admin,
            &[],
            "",
        )
        .await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    let started = Instant::now();
    let tls = a.tls_addr.expect("tls");
    while handshake(
        tls,
        "shared.test",
        client_config(ca.roots(), &[b"http/1.1"]),
    )
    .await
    .is_ok()
    {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "A still serves the removed certificate"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.stop().await;
    b.stop().await;
}

#[test]
fn cluster_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |env: &[(&str, &str)]| {
        let mut command = herve_command(dir.path());
        for (key, value) in env {
            command.env(key, value);
        }
        let out = command.output().expect("herve runs");
        assert!(!out.status.success(), "herve started with {env:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let url = ("HERVE_DATABASE_URL", "postgres://herve@127.0.0.1:1/herve");
    let admin = [
        ("AUTH_ADMIN_ID", "root"),
        ("AUTH_ADMIN_SECRET", "a-long-enough-secret"),
    ];
    let said = run(&[url]);
    assert!(
        said.contains("HERVE_DATABASE_URL needs AUTH_ADMIN_ID and AUTH_ADMIN_SECRET"),
        "{said}"
    );
    let said = run(&[
        url,
        admin[0],
        admin[1],
        ("HERVE_NODE_NAME", "no spaces please"),
    ]);
    assert!(
        said.contains("HERVE_NODE_NAME 'no spaces please' must be"),
        "{said}"
    );
    let said = run(&[
        url,
        admin[0],
        admin[1],
        ("HERVE_NODE_ADDR", "10.0.0.2:5000"),
    ]);
    assert!(
        said.contains("HERVE_NODE_ADDR '10.0.0.2:5000' must be an http://"),
        "{said}"
    );
    let said = run(&[("HERVE_DATABASE_URL", "mysql:/nope"), admin[0], admin[1]]);
    assert!(said.contains("invalid database URL"), "{said}");
    let said = run(&[url, admin[0], admin[1]]);
    assert!(
        said.contains("the shared database cannot be reached"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_orders_once_and_any_node_answers_the_challenge() {
    use crate::acme::{acme_settings, certificate_of, Pebble, PebblePorts};
    let pebble_dir = tempfile::tempdir().expect("tempdir");
    let root = Pebble::prepare(pebble_dir.path());
    let ports = PebblePorts::pick();
    let directory = ports.directory();
    let postgres = Postgres::start();
    // A orders; the ACME server validates through B, which orders nothing itself.
    let a = node_with(&postgres, "a", |config| {
        acme_settings(config, &directory, &root, herve::AcmeChallenge::TlsAlpn01);
    })
    .await;
    let b = node_with(&postgres, "b", |config| config.tls_port = Some(0)).await;
    let b_tls = b.tls_addr.expect("tls");
    let pebble = Pebble::start(&ports, pebble_dir, b.addr.port(), b_tls.port(), 3600);

    a.running_with("site", "ping", &[("hosts", "acme.test")])
        .await;
    let on_a = certificate_of(&a, "acme.test", Duration::from_secs(60), |entry| {
        entry["status"] == "valid"
    })
    .await;
    let on_b = certificate_of(&b, "acme.test", Duration::from_secs(5), |entry| {
        entry["status"] == "valid"
    })
    .await;
    assert_eq!(
        on_a["serial"], on_b["serial"],
        "one certificate for the cluster"
    );

    // B serves it, trusted through pebble's root.
    let issuing_root = pebble.issuing_root();
    let (ok, out) = crate::tls_client::curl(&[
        "--cacert",
        issuing_root.to_str().expect("path"),
        "--resolve",
        &format!("acme.test:{}:127.0.0.1", b_tls.port()),
        &format!("https://acme.test:{}/ping", b_tls.port()),
    ]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "pong");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_pinned_to_a_node_runs_there_and_moves_when_the_pin_changes() {
    let postgres = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = crate::process_type::write_app(dir.path());
    let a = node(&postgres, "a").await;
    let b = node(&postgres, "b").await;
    let command = format!("python3 {app}");
    let uuid = crate::process_type::register_process(
        &a,
        "pinned",
        &[("command", command.as_str()), ("node", "b")],
    )
    .await
    .expect("registered");
    a.start(&uuid)
        .await
        .expect(200, "The service has successfully started.");
    let runs_on = |client: &HttpClient| {
        let client = client.clone();
        let uuid = uuid.clone();
        async move {
            let view = client.admin_get("/cluster").await.json();
            view["data"]["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|node| {
                    node["services"].as_array().is_some_and(|services| {
                        services
                            .iter()
                            .any(|s| s["uuid"] == uuid.as_str() && s["runs_on"] == "here")
                    })
                })
                .filter_map(|node| node["name"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        }
    };
    let started = Instant::now();
    while runs_on(&a.client).await != ["b"] {
        assert!(started.elapsed() < Duration::from_secs(5), "not run by b");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = crate::process_type::processes_of(&uuid);
    assert_eq!(first.len(), 1, "{first:?}");
    // b lists the program from the moment it holds the lease, a little before it
    // routes to it.
    for client in [&a.client, &b.client] {
        reaches(client, &uuid, first[0], Duration::from_secs(5)).await;
    }

    // Pinned to a instead: it moves, and still runs once.
    b.patch(&uuid, &[("node", "a")])
        .await
        .expect(200, "The service has been successfully updated.");
    let started = Instant::now();
    loop {
        let now = crate::process_type::processes_of(&uuid);
        assert!(now.len() <= 1, "two programs at once: {now:?}");
        if runs_on(&b.client).await == ["a"] && now.len() == 1 && now != first {
            assert_eq!(pid_through(&b.client, &uuid).await, Some(u64::from(now[0])));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "did not move to a"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Only programs are placed: a pin on another type is refused.
    let refused = a
        .post_form(
            "/services/register",
            &[("name", "everywhere"), ("type", "ping"), ("node", "a")],
        )
        .await;
    refused.expect(
        400,
        "The field 'node' applies to process services only: 'ping' services run on every node.",
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_pinned_to_a_node_yet_to_join_starts_when_it_joins() {
    let postgres = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = crate::process_type::write_app(dir.path());
    let a = node(&postgres, "a").await;
    let command = format!("python3 {app}");
    let uuid = crate::process_type::register_process(
        &a,
        "later",
        &[("command", command.as_str()), ("node", "c")],
    )
    .await
    .expect("registered");
    // Started: the intent is stored, and traffic is told why nothing answers yet.
    a.start(&uuid)
        .await
        .expect(200, "The service has successfully started.");
    let waiting = a.get(&format!("/{uuid}/")).await;
    assert_eq!(waiting.status, 503, "{}", waiting.text());
    assert_eq!(
        waiting.text(),
        "The service runs on the node 'c', which has not joined the cluster yet.\n"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(crate::process_type::processes_of(&uuid).is_empty());

    // c joins: it runs the program, and a forwards to it.
    let c = node(&postgres, "c").await;
    let mut pids = Vec::new();
    crate::process_type::wait_for("c to run it", Duration::from_secs(5), async || {
        pids = crate::process_type::processes_of(&uuid);
        pids.len() == 1
    })
    .await;
    reaches(&a, &uuid, pids[0], Duration::from_secs(5)).await;
    reaches(&c, &uuid, pids[0], Duration::from_secs(1)).await;
    let shown = a.admin_get(&format!("/services/{uuid}")).await.json();
    assert_eq!(shown["data"]["status"], "running", "{shown}");
    a.stop().await;
    c.stop().await;
}

/// A program that answers every request with its pid and the headers it got.
const HEADERS_APP: &str = r#"
import http.server, json, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"pid": os.getpid(),
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// `GET path` sent to `to` from the loopback address `from` (each 127.x address is a
/// client of its own): the status, and the body.
async fn get_from(from: &str, to: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("address"))
        .expect("bind");
    let mut stream = socket.connect(to).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_programs_middlewares_run_on_its_node_keyed_on_the_real_client() {
    let postgres = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("headers.py");
    std::fs::write(&app, HEADERS_APP).expect("app");
    let a = node(&postgres, "a").await;
    let b = node(&postgres, "b").await;
    let command = format!("python3 {}", app.display());
    // Three requests an hour per client; the program runs on b.
    let uuid = crate::process_type::register_process(
        &a,
        "headers",
        &[
            ("command", command.as_str()),
            ("node", "b"),
            ("rate_limit", "3/h"),
        ],
    )
    .await
    .expect("registered");
    a.start(&uuid)
        .await
        .expect(200, "The service has successfully started.");
    crate::process_type::wait_for("b to run it", Duration::from_secs(5), async || {
        crate::process_type::processes_of(&uuid).len() == 1
    })
    .await;
    // Ready through a, as a client of its own (127.0.0.9).
    crate::process_type::wait_for("a to reach it", Duration::from_secs(5), async || {
        get_from("127.0.0.9", a.addr, "/headers/").await.0 == 200
    })
    .await;

    // Client 127.0.0.2 through a: counted once, as itself (not as a, the node that
    // forwards), and the program sees what it asked on a, never the nodes' proof.
    for _ in 0..3 {
        let (status, body) = get_from("127.0.0.2", a.addr, "/headers/").await;
        assert_eq!(status, 200, "{body}");
        let seen: serde_json::Value = serde_json::from_str(&body).expect("json");
        let headers = &seen["headers"];
        assert!(headers.get("x-herve-peer").is_none(), "{seen}");
        assert_eq!(headers["x-real-ip"], "127.0.0.2", "{seen}");
        assert_eq!(headers["x-forwarded-prefix"], "/headers", "{seen}");
        assert_eq!(headers["x-forwarded-proto"], "http", "{seen}");
    }
    assert_eq!(get_from("127.0.0.2", a.addr, "/headers/").await.0, 429);
    // Another client through the same node has its own count.
    assert_eq!(get_from("127.0.0.3", a.addr, "/headers/").await.0, 200);
    // And the count is the program's, wherever the client comes in.
    let direct = format!("/{uuid}/");
    assert_eq!(get_from("127.0.0.2", b.addr, &direct).await.0, 429);
    assert_eq!(get_from("127.0.0.4", b.addr, &direct).await.0, 200);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overheard_node_proof_opens_no_protected_service() {
    // The nodes' proof travels with every forwarded request: someone who overhears it
    // (plain HTTP between nodes) must still not get past a service's credentials.
    let postgres = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("headers.py");
    std::fs::write(&app, HEADERS_APP).expect("app");
    let command = format!("python3 {}", app.display());
    let a = node(&postgres, "a").await;
    let b = node(&postgres, "b").await;
    // A "node" whose address is a listener of this test: what a forwards there is
    // overheard.
    let spy = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let spy_addr = format!("http://{}", spy.local_addr().expect("addr"));
    let _spy_node = node_with(&postgres, "spy", move |config| {
        config.node_addr = Some(spy_addr);
    })
    .await;
    let overheard = crate::process_type::register_process(
        &a,
        "overheard",
        &[("command", command.as_str()), ("node", "spy")],
    )
    .await
    .expect("registered");
    a.start(&overheard)
        .await
        .expect(200, "The service has successfully started.");
    let listening = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, _) = spy.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the head");
            head.extend_from_slice(&buf[..n]);
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await;
        String::from_utf8_lossy(&head).into_owned()
    });
    assert_eq!(a.get("/overheard/").await.status, 200);
    let head = listening.await.expect("overheard");
    let proof = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-herve-peer")
                .then(|| value.trim().to_owned())
        })
        .expect("the proof in the forwarded request");

    // A protected program on b: the proof alone does not open it, nor does it with
    // wrong credentials; the right ones do.
    let hash = bcrypt::hash("open sesame", 4).expect("hash");
    let guarded = crate::process_type::register_process(
        &a,
        "guarded",
        &[
            ("command", command.as_str()),
            ("node", "b"),
            ("protect", "basic"),
            ("basic_users", &format!("ann:{hash}")),
            // The program never sees the credentials (removed after the check).
            ("request_headers", "-Authorization"),
        ],
    )
    .await
    .expect("registered");
    a.start(&guarded)
        .await
        .expect(200, "The service has successfully started.");
    let path = format!("/{guarded}/");
    let proof_header = [("x-herve-peer", proof.as_str())];
    let with_proof = |auth| b.send(hyper::Method::GET, &path, auth, &proof_header, "");
    let mut reply = with_proof(Auth::None).await;
    let started = Instant::now();
    while reply.status == 404 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        reply = with_proof(Auth::None).await;
    }
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(with_proof(Auth::Basic("ann", "wrong")).await.status, 401);
    let opened = with_proof(Auth::Basic("ann", "open sesame")).await;
    assert_eq!(opened.status, 200, "{}", opened.text());
    assert_eq!(opened.json()["headers"]["x-herve-user"], "ann");
    // And through a, with the credentials, as any client.
    let through_a = a
        .send(
            hyper::Method::GET,
            "/guarded/",
            Auth::Basic("ann", "open sesame"),
            &[],
            "",
        )
        .await;
    assert_eq!(through_a.status, 200, "{}", through_a.text());
    let seen = through_a.json();
    assert_eq!(seen["headers"]["x-herve-user"], "ann", "{seen}");
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_registering_the_same_name_or_route_at_once_do_not_both_win() {
    let postgres = Postgres::start();
    let a = node(&postgres, "a").await;
    let b = node(&postgres, "b").await;
    for round in 0..5 {
        let name = format!("same-{round}");
        let fields = [("name", name.as_str()), ("type", "ping")];
        let (first, second) = tokio::join!(
            a.post_form("/services/register", &fields),
            b.post_form("/services/register", &fields)
        );
        let mut statuses = [first.status.as_u16(), second.status.as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409], "{} / {}", first.text(), second.text());
        let host = format!("route-{round}.test");
        let (x, y) = (format!("x-{round}"), format!("y-{round}"));
        let on_a = [
            ("name", x.as_str()),
            ("type", "ping"),
            ("hosts", host.as_str()),
        ];
        let on_b = [
            ("name", y.as_str()),
            ("type", "ping"),
            ("hosts", host.as_str()),
        ];
        let (first, second) = tokio::join!(
            a.post_form("/services/register", &on_a),
            b.post_form("/services/register", &on_b)
        );
        let mut statuses = [first.status.as_u16(), second.status.as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409], "{} / {}", first.text(), second.text());
        let refused = if first.status == 409 { &first } else { &second };
        assert!(
            refused
                .message()
                .starts_with(&format!("The route {host} is taken by the service")),
            "{}",
            refused.text()
        );
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_cleanly_hands_its_programs_over_at_once() {
    let postgres = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = crate::process_type::write_app(dir.path());
    // Leases of 28 s: a hand-over within seconds is not an expiry.
    let long = |config: &mut herve::Config| config.failover_s = 30;
    let a = node_with(&postgres, "a", long).await;
    let b = node_with(&postgres, "b", long).await;
    let command = format!("python3 {app}");
    let uuid =
        crate::process_type::register_process(&a, "handed", &[("command", command.as_str())])
            .await
            .expect("registered");
    a.start(&uuid)
        .await
        .expect(200, "The service has successfully started.");
    let before = crate::process_type::processes_of(&uuid);
    assert_eq!(before.len(), 1, "{before:?}");
    until_status(&b, &format!("/{uuid}/"), 200, Duration::from_secs(2)).await;

    // A stops as an operator stops it: its lease is given back, and B does not wait
    // for it to run out (28 s).
    let stopped = Instant::now();
    a.stop().await;
    let moved = moved_program(&uuid, &before, Duration::from_secs(5)).await;
    println!("handed over in {:?}", stopped.elapsed());
    reaches(&b.client, &uuid, moved[0], Duration::from_secs(5)).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_session_opened_on_one_node_works_on_the_others() {
    let postgres = Postgres::start();
    let a = node(&postgres, "a").await;
    let b = node(&postgres, "b").await;
    let form = format!("id={ADMIN_ID}&secret={ADMIN_SECRET}");
    let form_type = [("content-type", "application/x-www-form-urlencoded")];
    let signed = a
        .send(
            hyper::Method::POST,
            "/ui/login",
            Auth::None,
            &form_type,
            form,
        )
        .await;
    assert_eq!(signed.status, 303, "{}", signed.text());
    let cookie = signed
        .header("set-cookie")
        .and_then(|set| set.split(';').next())
        .expect("a cookie")
        .to_owned();
    // B knows the session: it lists, and its page carries the session's token.
    let page = b
        .send(
            hyper::Method::GET,
            "/ui/",
            Auth::None,
            &[("cookie", &cookie)],
            "",
        )
        .await
        .text();
    let token = page
        .split("name=\"csrf\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("B shows the signed-in page")
        .to_owned();
    let listed = b
        .send(
            hyper::Method::GET,
            "/services",
            Auth::None,
            &[("cookie", &cookie)],
            "",
        )
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    // A change through B with the token made by A.
    let made = b
        .send(
            hyper::Method::POST,
            "/services/register",
            Auth::None,
            &[
                ("cookie", &cookie),
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-csrf-token", &token),
            ],
            "name=from-the-dashboard&type=echo",
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text());
    // Signed out through B: A refuses the cookie (within its recheck of 5 s).
    let out = b
        .send(
            hyper::Method::POST,
            "/ui/logout",
            Auth::None,
            &[("cookie", &cookie), ("x-csrf-token", &token)],
            "",
        )
        .await;
    assert_eq!(out.status, 204, "{}", out.text());
    let started = Instant::now();
    loop {
        let tried = a
            .send(
                hyper::Method::GET,
                "/services",
                Auth::None,
                &[("cookie", &cookie)],
                "",
            )
            .await;
        if tried.status == 401 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(7),
            "A still takes the cookie"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_the_admin_secret_through_several_nodes_gains_nothing() {
    let postgres = Postgres::start();
    let strict = |config: &mut herve::Config| config.auth_max_failures = 4;
    let a = node_with(&postgres, "a", strict).await;
    let b = node_with(&postgres, "b", strict).await;
    // Two wrong guesses through each node: four in all, which the limit allows on
    // neither node alone.
    for node in [&a, &b] {
        for _ in 0..2 {
            let wrong = node
                .get_as("/services", Auth::Basic(ADMIN_ID, "guess"))
                .await;
            assert_eq!(wrong.status, 401, "{}", wrong.text());
        }
    }
    // Within a couple of heartbeats, both nodes refuse the address, even the secret.
    let started = Instant::now();
    for node in [&a, &b] {
        loop {
            let tried = node.admin_get("/services").await;
            if tried.status == 429 {
                break;
            }
            assert_eq!(tried.status, 200, "{}", tried.text());
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "{} still lets the address guess",
                node.addr
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_reached_over_verified_tls_when_asked() {
    use crate::tls_client::TestCa;
    let ca = TestCa::new("database CA");
    let postgres = Postgres::start_tls(&ca.issue(&["127.0.0.1", "localhost"]));
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = ca.write(dir.path());
    let url = format!("{}?sslmode=require", postgres.url());
    let ca_path = ca_file.clone();
    let verified = node_with(&postgres, "a", move |config| {
        config.database_url = Some(url);
        config.database_ca = Some(ca_path);
    })
    .await;
    verified.register_ok("over-tls", "ping").await;
    let encrypted = postgres.sql(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'herve' AND s.ssl",
    );
    assert_ne!(encrypted, "0", "no TLS connection from Herve");
    let plain = postgres.sql(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'herve' AND NOT s.ssl",
    );
    assert_eq!(plain, "0", "a plain connection from Herve");
    verified.stop().await;

    // A server the given CA did not sign is refused, with the reason.
    let other = TestCa::new("someone else");
    std::fs::create_dir_all(dir.path().join("other")).expect("dir");
    let wrong = other.write(&dir.path().join("other"));
    let mut command = herve_command(dir.path());
    command
        .env("AUTH_ADMIN_ID", ADMIN_ID)
        .env("AUTH_ADMIN_SECRET", ADMIN_SECRET)
        .env(
            "HERVE_DATABASE_URL",
            format!("{}?sslmode=require", postgres.url()),
        )
        .env("HERVE_DATABASE_CA", &wrong);
    let out = command.output().expect("herve runs");
    assert!(
        !out.status.success(),
        "herve trusted a server its CA did not sign"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("certificate"), "{said}");
}
