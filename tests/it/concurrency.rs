//! Many clients at once: registrations, churn, and requests racing lifecycle changes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use hyper::Method;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_registrations_are_all_listed() {
    let herve = TestHerve::start().await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let client = herve.client.clone();
        tasks.push(tokio::spawn(async move {
            let type_name = if i % 2 == 0 { "echo" } else { "ping" };
            client
                .register_ok(&format!("parallel-{i}"), type_name)
                .await
        }));
    }
    let mut uuids = HashSet::new();
    for task in tasks {
        assert!(uuids.insert(task.await.expect("task")));
    }
    let listed: HashSet<String> = herve
        .list()
        .await
        .iter()
        .map(|s| s["uuid"].as_str().expect("uuid").to_owned())
        .collect();
    assert_eq!(listed, uuids);
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_of_one_name_admit_exactly_one() {
    let herve = TestHerve::start().await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = herve.client.clone();
        tasks.push(tokio::spawn(async move {
            client.register("same", "echo").await.status
        }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.expect("task").as_u16() {
            201 => created += 1,
            409 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(herve.list().await.len(), 1);
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_register_unregister_cycles_leave_nothing() {
    let herve = TestHerve::start().await;
    let keeper = herve.register_ok("keeper", "ping").await;
    for i in 0..1000 {
        let uuid = herve.register_ok(&format!("cycle-{}", i % 7), "echo").await;
        herve
            .unregister(&uuid)
            .await
            .expect(200, "The service has been successfully unregistered.");
    }
    let listed = herve.list().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["uuid"], keeper.as_str());
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_racing_stop_and_start_get_the_answer_or_404() {
    let herve = TestHerve::start().await;
    let ping = herve.running("racer", "ping").await;
    let echo = herve.running("racer-echo", "echo").await;
    let done = Arc::new(AtomicBool::new(false));
    let mut hammers = Vec::new();
    for worker in 0..6 {
        let client = herve.client.clone();
        let done = Arc::clone(&done);
        let (ping, echo) = (ping.clone(), echo.clone());
        hammers.push(tokio::spawn(async move {
            let (mut answered, mut absent) = (0u32, 0u32);
            while !done.load(Ordering::Relaxed) {
                let reply = if worker % 2 == 0 {
                    client.get(&format!("/{ping}/ping")).await
                } else {
                    client
                        .send(
                            Method::POST,
                            &format!("/{echo}/echo"),
                            Auth::None,
                            &[],
                            Bytes::from_static(b"racing"),
                        )
                        .await
                };
                match reply.status.as_u16() {
                    200 => {
                        assert!(&reply.body[..] == b"pong\n" || &reply.body[..] == b"racing");
                        answered += 1;
                    }
                    404 => absent += 1,
                    other => panic!("status {other} while racing: {}", reply.text()),
                }
            }
            (answered, absent)
        }));
    }
    for _ in 0..60 {
        for uuid in [&ping, &echo] {
            herve
                .stop_service(uuid)
                .await
                .expect(200, "The service has successfully stopped.");
        }
        for uuid in [&ping, &echo] {
            herve
                .start(uuid)
                .await
                .expect(200, "The service has successfully started.");
        }
    }
    done.store(true, Ordering::Relaxed);
    let (mut answered, mut absent) = (0, 0);
    for hammer in hammers {
        let (a, b) = hammer.await.expect("hammer");
        answered += a;
        absent += b;
    }
    assert!(answered > 0, "no request was answered");
    println!("racing: {answered} answered, {absent} 404");
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_lifecycle_calls_on_one_service_stay_consistent() {
    let herve = TestHerve::start().await;
    let uuid = herve.register_ok("contended", "ping").await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let client = herve.client.clone();
        let uuid = uuid.clone();
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                0 => client.start(&uuid).await.status.as_u16(),
                1 => client.stop_service(&uuid).await.status.as_u16(),
                _ => client.unregister(&uuid).await.status.as_u16(),
            }
        }));
    }
    for task in tasks {
        let status = task.await.expect("task");
        assert!(matches!(status, 200 | 400 | 404), "status {status}");
    }
    // Whatever the interleaving, the listing and the routes agree.
    let listed = herve.list().await;
    let routed = herve.get(&format!("/{uuid}/ping")).await.status.as_u16();
    match listed.first() {
        Some(service) if service["status"] == "running" => assert_eq!(routed, 200),
        _ => assert_eq!(routed, 404),
    }
    herve.stop().await;
}
