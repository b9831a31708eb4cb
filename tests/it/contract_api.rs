//! Every row of the contract's endpoint table, with its exact statuses and messages.

use bytes::Bytes;
use hyper::Method;
use serde_json::Value;

use crate::support::*;

const UNKNOWN_UUID: &str = "0b5d8a3e-9a51-4c4e-8f7a-2a1d1c9f0e77";

#[tokio::test]
async fn health_answers_without_credentials_and_ignores_bad_ones() {
    let herve = TestHerve::start().await;
    for auth in [
        Auth::None,
        Auth::Basic("nobody", "wrong"),
        Auth::Raw("Basic !!!"),
    ] {
        let reply = herve
            .send(Method::GET, "/health", auth, &[], Bytes::new())
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), r#"{"success":true,"message":"ok"}"#);
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    herve.stop().await;
}

#[tokio::test]
async fn admin_endpoints_need_the_whole_id_and_secret() {
    let herve = TestHerve::start().await;
    let uuid = herve.register_ok("guarded", "echo").await;
    let endpoints = [
        (Method::GET, "/services".to_owned()),
        (Method::POST, "/services/register".to_owned()),
        (Method::GET, format!("/services/{uuid}")),
        (Method::POST, format!("/services/{uuid}/start")),
        (Method::POST, format!("/services/{uuid}/stop")),
        (Method::POST, format!("/services/{uuid}/unregister")),
    ];
    let prefix = &ADMIN_SECRET[..ADMIN_SECRET.len() - 1];
    let longer = format!("{ADMIN_SECRET}x");
    let id_prefix = &ADMIN_ID[..ADMIN_ID.len() - 1];
    let bad = [
        Auth::None,
        Auth::Basic(ADMIN_ID, ""),
        Auth::Basic(ADMIN_ID, prefix),
        Auth::Basic(ADMIN_ID, &longer),
        Auth::Basic(id_prefix, ADMIN_SECRET),
        Auth::Basic("", ADMIN_SECRET),
        Auth::Basic("admin", ADMIN_SECRET),
        Auth::Raw("Bearer test-secret-0123"),
        Auth::Raw("Basic"),
        Auth::Raw("Basic %%%"),
    ];
    for (method, path) in &endpoints {
        for auth in bad {
            let reply = herve
                .send(method.clone(), path, auth, &[], Bytes::new())
                .await;
            assert_eq!(reply.status, 401, "{method} {path}");
            assert_eq!(
                reply.header("www-authenticate"),
                Some("Basic realm=\"herve\"")
            );
            assert_eq!(reply.json()["success"], false);
        }
    }
    // Not even a wrong method tells a stranger what is there.
    for (method, path) in [
        (Method::GET, "/services/register"),
        (Method::DELETE, "/services"),
    ] {
        let reply = herve
            .send(method, path, Auth::None, &[], Bytes::new())
            .await;
        assert_eq!(reply.status, 401, "{path}");
    }
    // The service was neither started nor unregistered by any of that.
    let listed = herve.list().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "registered");
    herve.stop().await;
}

#[tokio::test]
async fn register_answers_201_with_the_new_service_in_contract_order() {
    let herve = TestHerve::start().await;
    let reply = herve.register("my-echo", "echo").await;
    reply.expect(201, "The service has been successfully registered.");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let data = &reply.json()["data"];
    let uuid = data["uuid"].as_str().expect("uuid");
    let parsed = uuid::Uuid::parse_str(uuid).expect("a uuid");
    assert_eq!(parsed.get_version_num(), 4);
    assert_eq!(uuid, uuid.to_lowercase());
    let expected = format!(
        r#"{{"success":true,"message":"The service has been successfully registered.","data":{{"uuid":"{uuid}","name":"my-echo","description":"A service returning the request body","status":"registered","type":"echo"}}}}"#
    );
    assert_eq!(reply.text(), expected);

    let ping = herve.register("my-ping", "ping").await;
    assert_eq!(
        ping.json()["data"]["description"],
        "A service returning pong to /ping"
    );
    herve.stop().await;
}

#[tokio::test]
async fn register_rejects_bad_fields_with_messages_naming_them() {
    let herve = TestHerve::start().await;
    herve
        .post_form("/services/register", &[("name", "x"), ("type", "nope")])
        .await
        .expect(404, "This service type does not exist.");

    let missing_name = herve
        .post_form("/services/register", &[("type", "echo")])
        .await;
    assert_eq!(missing_name.status, 400);
    assert!(
        missing_name.message().contains("'name'"),
        "{}",
        missing_name.text()
    );

    let missing_type = herve
        .post_form("/services/register", &[("name", "ok")])
        .await;
    assert_eq!(missing_type.status, 400);
    assert!(
        missing_type.message().contains("'type'"),
        "{}",
        missing_type.text()
    );

    let too_long = "a".repeat(64);
    for name in [
        "-lead",
        ".dot",
        "has space",
        "sl/ash",
        "é",
        "",
        too_long.as_str(),
        "a\u{0}b",
    ] {
        let reply = herve.register(name, "echo").await;
        assert_eq!(reply.status, 400, "name {name:?}: {}", reply.text());
        assert!(reply.message().contains("'name'"), "{}", reply.text());
    }
    let longest = "b".repeat(63);
    for name in ["a", "A-9._z", longest.as_str()] {
        assert_eq!(
            herve.register(name, "echo").await.status,
            201,
            "name {name:?}"
        );
    }

    let duplicate = herve.register("a", "ping").await;
    assert_eq!(duplicate.status, 409);
    assert!(duplicate.message().contains("'a'"), "{}", duplicate.text());

    let xml = herve
        .send(
            Method::POST,
            "/services/register",
            Auth::Admin,
            &[("content-type", "text/xml")],
            "<name>x</name>",
        )
        .await;
    assert_eq!(xml.status, 415, "{}", xml.text());

    let broken_json = herve
        .send(
            Method::POST,
            "/services/register",
            Auth::Admin,
            &[("content-type", "application/json")],
            "{\"name\":",
        )
        .await;
    assert_eq!(broken_json.status, 400);
    assert!(broken_json.message().contains("JSON"));

    // None of the refused registrations left anything behind.
    assert_eq!(herve.list().await.len(), 3);
    herve.stop().await;
}

#[tokio::test]
async fn form_bodies_decode_like_the_contract_says() {
    let herve = TestHerve::start().await;
    // charset parameter, percent-decoding, later duplicate wins, unknown keys ignored.
    let reply = herve
        .send(
            Method::POST,
            "/services/register",
            Auth::Admin,
            &[(
                "content-type",
                "application/x-www-form-urlencoded; charset=UTF-8",
            )],
            "name=first&type=echo&colour=blue&name=web%2D1&type=ping",
        )
        .await;
    reply.expect(201, "The service has been successfully registered.");
    let data = &reply.json()["data"];
    assert_eq!(data["name"], "web-1");
    assert_eq!(data["type"], "ping");

    let json = herve
        .send(
            Method::POST,
            "/services/register",
            Auth::Admin,
            &[("content-type", "application/json")],
            r#"{"name":"from-json","type":"echo"}"#,
        )
        .await;
    json.expect(201, "The service has been successfully registered.");
    herve.stop().await;
}

#[tokio::test]
async fn list_is_newest_first_without_a_message() {
    let herve = TestHerve::start().await;
    let empty = herve.admin_get("/services").await;
    assert_eq!(empty.text(), r#"{"success":true,"data":[]}"#);

    let mut uuids = Vec::new();
    for i in 0..5 {
        uuids.push(herve.register_ok(&format!("svc{i}"), "echo").await);
    }
    let reply = herve.admin_get("/services").await;
    assert!(reply
        .text()
        .starts_with(r#"{"success":true,"data":[{"uuid":"#));
    let listed: Vec<String> = reply.json()["data"]
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["uuid"].as_str().expect("uuid").to_owned())
        .collect();
    uuids.reverse();
    assert_eq!(listed, uuids);
    herve.stop().await;
}

#[tokio::test]
async fn lifecycle_of_echo_and_ping() {
    let herve = TestHerve::start().await;
    let echo = herve.register_ok("e", "echo").await;
    let ping = herve.register_ok("p", "ping").await;

    // Not running yet: the routes do not answer.
    assert_eq!(herve.get(&format!("/{ping}/ping")).await.status, 404);

    for uuid in [&echo, &ping] {
        herve
            .start(uuid)
            .await
            .expect(200, "The service has successfully started.");
        assert_eq!(
            herve.start(uuid).await.text(),
            r#"{"success":true,"message":"The service has successfully started."}"#
        );
    }

    let pong = herve.get(&format!("/{ping}/ping")).await;
    assert_eq!(pong.status, 200);
    assert_eq!(&pong.body[..], b"pong\n");
    assert_eq!(
        pong.header("content-type"),
        Some("text/plain; charset=UTF-8")
    );

    let every_byte: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let echoed = herve
        .send(
            Method::POST,
            &format!("/{echo}/echo"),
            Auth::None,
            &[],
            every_byte.clone(),
        )
        .await;
    assert_eq!(echoed.status, 200);
    assert_eq!(
        echoed.header("content-type"),
        Some("text/plain; charset=UTF-8")
    );
    assert_eq!(&echoed.body[..], &every_byte[..]);

    let empty = herve
        .send(
            Method::POST,
            &format!("/{echo}/echo"),
            Auth::None,
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(empty.status, 200);
    assert!(empty.body.is_empty());

    let statuses: Vec<Value> = herve
        .list()
        .await
        .iter()
        .map(|s| s["status"].clone())
        .collect();
    assert_eq!(statuses, ["running", "running"]);

    herve.unregister(&echo).await.expect(
        400,
        "The service should be stopped before being unregistered",
    );

    herve
        .stop_service(&echo)
        .await
        .expect(200, "The service has successfully stopped.");
    herve
        .stop_service(&echo)
        .await
        .expect(200, "The service has successfully stopped.");
    let after = herve
        .send(Method::POST, &format!("/{echo}/echo"), Auth::None, &[], "x")
        .await;
    assert_eq!(after.status, 404);
    let shown = herve.admin_get(&format!("/services/{echo}")).await;
    assert_eq!(shown.json()["data"]["status"], "stopped");

    herve
        .unregister(&echo)
        .await
        .expect(200, "The service has been successfully unregistered.");
    assert_eq!(herve.list().await.len(), 1);
    herve
        .start(&echo)
        .await
        .expect(404, "The service does not exist.");
    herve.stop().await;
}

#[tokio::test]
async fn stopping_a_registered_service_succeeds_and_keeps_it_registered() {
    let herve = TestHerve::start().await;
    let uuid = herve.register_ok("idle", "ping").await;
    herve
        .stop_service(&uuid)
        .await
        .expect(200, "The service has successfully stopped.");
    assert_eq!(herve.list().await[0]["status"], "registered");
    herve
        .unregister(&uuid)
        .await
        .expect(200, "The service has been successfully unregistered.");
    herve.stop().await;
}

#[tokio::test]
async fn unknown_uuids_are_404_on_every_operation() {
    let herve = TestHerve::start().await;
    for id in [
        UNKNOWN_UUID,
        "not-a-uuid",
        "0b5d8a3e9a514c4e8f7a2a1d1c9f0e77",
        "%00",
    ] {
        for op in ["start", "stop", "unregister"] {
            herve
                .admin_post(&format!("/services/{id}/{op}"))
                .await
                .expect(404, "The service does not exist.");
        }
        herve
            .admin_get(&format!("/services/{id}"))
            .await
            .expect(404, "The service does not exist.");
    }
    herve.stop().await;
}

#[tokio::test]
async fn uuids_are_case_insensitive() {
    let herve = TestHerve::start().await;
    let uuid = herve.register_ok("p", "ping").await;
    let upper = uuid.to_uppercase();
    herve
        .start(&upper)
        .await
        .expect(200, "The service has successfully started.");
    let pong = herve.get(&format!("/{upper}/ping")).await;
    assert_eq!(&pong.body[..], b"pong\n");
    herve.stop().await;
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow_and_unknown_paths_404() {
    let herve = TestHerve::start().await;
    let uuid = herve.running("p", "ping").await;
    let echo = herve.running("e", "echo").await;
    let cases = [
        (Method::GET, "/services/register".to_owned(), "POST"),
        (Method::DELETE, "/services".to_owned(), "GET,HEAD"),
        (Method::POST, "/health".to_owned(), "GET,HEAD"),
        (Method::GET, format!("/services/{uuid}/start"), "POST"),
        (Method::POST, format!("/{uuid}/ping"), "GET,HEAD"),
        (Method::GET, format!("/{echo}/echo"), "POST"),
    ];
    for (method, path, allow) in cases {
        let reply = herve
            .send(method.clone(), &path, Auth::Admin, &[], Bytes::new())
            .await;
        assert_eq!(reply.status, 405, "{method} {path}");
        assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
    }
    for path in [
        "/",
        "/nope",
        "/services/x/y/z",
        &format!("/{uuid}/nope"),
        &format!("/{UNKNOWN_UUID}/ping"),
    ] {
        let reply = herve
            .send(Method::GET, path, Auth::Admin, &[], Bytes::new())
            .await;
        assert_eq!(reply.status, 404, "{path}");
    }
    herve.stop().await;
}

#[tokio::test]
async fn service_routes_need_no_admin_credentials_and_ignore_them() {
    let herve = TestHerve::start().await;
    let uuid = herve.running("p", "ping").await;
    for auth in [Auth::None, Auth::Admin, Auth::Basic("x", "y")] {
        let reply = herve
            .send(
                Method::GET,
                &format!("/{uuid}/ping"),
                auth,
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(&reply.body[..], b"pong\n");
    }
    herve.stop().await;
}

#[tokio::test]
async fn the_service_limit_is_a_409() {
    let herve = TestHerve::start_with(|c| c.max_services = 3).await;
    for i in 0..3 {
        herve.register_ok(&format!("s{i}"), "echo").await;
    }
    let refused = herve.register("s3", "echo").await;
    assert_eq!(refused.status, 409);
    assert!(
        refused.message().contains("maximum number of services (3)"),
        "{}",
        refused.text()
    );
    // Room again once one is gone.
    let first = herve.list().await[2]["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    herve
        .unregister(&first)
        .await
        .expect(200, "The service has been successfully unregistered.");
    herve.register_ok("s3", "echo").await;
    herve.stop().await;
}
