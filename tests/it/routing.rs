//! Routes by host name, path prefix and name; edits in place; the admin API on its own
//! address. Real proxies in front of real upstreams tell who answered (an upstream's
//! `/id` is its name; its `/echo` tells what it received).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::Value;

use crate::support::*;
use crate::upstream_server::Upstream;

/// A proxy service in front of `upstream`, registered with `fields` and started.
async fn proxy_to(
    herve: &HttpClient,
    name: &str,
    upstream: &Upstream,
    fields: &[(&str, &str)],
) -> String {
    let url = upstream.url();
    let mut all = vec![("upstream", url.as_str())];
    all.extend_from_slice(fields);
    herve.running_with(name, "proxy", &all).await
}

/// `GET path` with `Host: host`.
async fn get_on(herve: &HttpClient, host: &str, path: &str) -> Reply {
    herve
        .send(
            Method::GET,
            path,
            Auth::None,
            &[("host", host)],
            Bytes::new(),
        )
        .await
}

async fn answered_by(herve: &HttpClient, host: &str, path: &str) -> String {
    let reply = get_on(herve, host, path).await;
    assert_eq!(reply.status, 200, "{host}{path}: {}", reply.text());
    reply.text()
}

#[tokio::test]
async fn host_routes_follow_their_precedence() {
    let herve = TestHerve::start().await;
    let (site, api, wild, shared) = (
        Upstream::start("site").await,
        Upstream::start("api").await,
        Upstream::start("wild").await,
        Upstream::start("shared").await,
    );
    proxy_to(&herve, "site", &site, &[("hosts", "app.example.com")]).await;
    proxy_to(
        &herve,
        "api",
        &api,
        &[("hosts", "app.example.com"), ("path", "/api")],
    )
    .await;
    proxy_to(&herve, "wild", &wild, &[("hosts", "*.example.com")]).await;
    proxy_to(&herve, "shared", &shared, &[("path", "/shared")]).await;

    // Exact host before wildcard; the longest prefix; whole segments only; case and
    // port ignored.
    assert_eq!(answered_by(&herve, "app.example.com", "/id").await, "site");
    assert_eq!(
        answered_by(&herve, "APP.Example.com:8080", "/api/id").await,
        "api"
    );
    assert_eq!(
        answered_by(&herve, "app.example.com", "/apix").await,
        "site"
    );
    assert_eq!(
        answered_by(&herve, "other.example.com", "/id").await,
        "wild"
    );
    // A wildcard covers one label, not more, and not the parent itself.
    assert_eq!(get_on(&herve, "a.b.example.com", "/id").await.status, 404);
    assert_eq!(get_on(&herve, "example.com", "/id").await.status, 404);
    // A path without hosts answers on every host.
    assert_eq!(
        answered_by(&herve, "anything.test", "/shared/id").await,
        "shared"
    );

    // The prefix is stripped and passed on as X-Forwarded-Prefix.
    let seen = get_on(&herve, "app.example.com", "/api/echo?q=1")
        .await
        .json();
    assert_eq!(seen["uri"], "/echo?q=1");
    assert_eq!(seen["headers"]["x-forwarded-prefix"], "/api");
    assert_eq!(seen["headers"]["x-forwarded-host"], "app.example.com");
    let seen = get_on(&herve, "app.example.com", "/api").await;
    assert_eq!(seen.text(), "api", "the prefix alone is the service's /");

    // Herve's own paths come first, whatever the host.
    assert_eq!(
        get_on(&herve, "app.example.com", "/health").await.status,
        200
    );
    // The service object shows its routes.
    let listed = herve.list().await;
    let api_view = listed.iter().find(|s| s["name"] == "api").expect("api");
    assert_eq!(api_view["hosts"], serde_json::json!(["app.example.com"]));
    assert_eq!(api_view["path"], "/api");
    let plain = herve.running("plain", "ping").await;
    let plain_view = herve.admin_get(&format!("/services/{plain}")).await.json();
    assert!(plain_view["data"].get("hosts").is_none(), "{plain_view}");
    herve.stop().await;
}

#[tokio::test]
async fn services_are_reached_by_name_and_names_must_not_be_ambiguous() {
    let herve = TestHerve::start().await;
    let uuid = herve.running("shop", "ping").await;
    assert_eq!(herve.get("/shop/ping").await.text(), "pong\n");
    assert_eq!(herve.get(&format!("/{uuid}/ping")).await.text(), "pong\n");
    assert_eq!(herve.get("/shopx/ping").await.status, 404);
    herve
        .stop_service(&uuid)
        .await
        .expect(200, "The service has successfully stopped.");
    assert_eq!(herve.get("/shop/ping").await.status, 404);

    for reserved in [
        "services",
        "health",
        "metrics",
        "ui",
        "openapi.json",
        "certificates",
        "cluster",
    ] {
        let reply = herve.register(reserved, "ping").await;
        assert_eq!(reply.status, 400, "{reserved}: {}", reply.text());
        assert!(reply.message().contains(reserved), "{}", reply.text());
    }
    let reply = herve
        .register("3f2b8c1e-5d4a-4e7b-9c2d-8a1f0e6b7c93", "ping")
        .await;
    reply.expect(
        400,
        "The field 'name' must not be a uuid: services are reached by both.",
    );
    herve.stop().await;
}

#[tokio::test]
async fn invalid_and_conflicting_routes_are_refused() {
    let herve = TestHerve::start().await;
    let upstream = Upstream::start("a").await;
    let first = proxy_to(
        &herve,
        "first",
        &upstream,
        &[("hosts", "app.test"), ("path", "/api")],
    )
    .await;
    let url = upstream.url();
    for (fields, field) in [
        (vec![("hosts", "bad host")], "'hosts'"),
        (vec![("hosts", "a.test:80")], "'hosts'"),
        (vec![("hosts", "*")], "'hosts'"),
        (vec![("hosts", "bücher.test")], "'hosts'"),
        (vec![("path", "api")], "'path'"),
        (vec![("path", "/a/../b")], "'path'"),
        (vec![("description", "two\nlines")], "'description'"),
    ] {
        let mut all = vec![
            ("name", "second"),
            ("type", "proxy"),
            ("upstream", url.as_str()),
        ];
        all.extend(fields.iter().copied());
        let reply = herve.post_form("/services/register", &all).await;
        assert_eq!(reply.status, 400, "{fields:?}: {}", reply.text());
        assert!(reply.message().contains(field), "{}", reply.text());
    }
    // The same host and prefix: 409 naming the other service, whatever the case.
    let reply = herve
        .post_form(
            "/services/register",
            &[
                ("name", "second"),
                ("type", "proxy"),
                ("upstream", &url),
                ("hosts", "APP.test"),
                ("path", "/api/"),
            ],
        )
        .await;
    reply.expect(
        409,
        "The route app.test/api is taken by the service 'first'.",
    );
    // Another prefix on the same host is fine; then an edit onto the taken one is not.
    let second = herve
        .post_form(
            "/services/register",
            &[
                ("name", "second"),
                ("type", "proxy"),
                ("upstream", &url),
                ("hosts", "app.test"),
                ("path", "/v2"),
            ],
        )
        .await;
    second.expect(201, "The service has been successfully registered.");
    let second = second.json()["data"]["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    herve.patch(&second, &[("path", "/api")]).await.expect(
        409,
        "The route app.test/api is taken by the service 'first'.",
    );
    // Once the first lets it go, it is free.
    herve.stop_service(&first).await;
    herve
        .unregister(&first)
        .await
        .expect(200, "The service has been successfully unregistered.");
    herve
        .patch(&second, &[("path", "/api")])
        .await
        .expect(200, "The service has been successfully updated.");

    // JSON bodies take the same fields; an IDN is routed in its punycode form.
    let json = |body: serde_json::Value| body.to_string();
    let content_type = [("content-type", "application/json")];
    let registered = herve
        .send(
            Method::POST,
            "/services/register",
            Auth::Admin,
            &content_type,
            json(serde_json::json!({"name": "json-site", "type": "ping", "hosts": "xn--bcher-kva.test"})),
        )
        .await;
    registered.expect(201, "The service has been successfully registered.");
    let uuid = registered.json()["data"]["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    herve
        .send(
            Method::PATCH,
            &format!("/services/{uuid}"),
            Auth::Admin,
            &content_type,
            json(serde_json::json!({"path": "/books"})),
        )
        .await
        .expect(200, "The service has been successfully updated.");
    herve.start(&uuid).await;
    let reply = get_on(&herve, "XN--BCHER-KVA.test", "/books/ping").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    herve
        .send(
            Method::PATCH,
            &format!("/services/{uuid}"),
            Auth::Admin,
            &content_type,
            json(serde_json::json!({"path": 42})),
        )
        .await
        .expect(
            400,
            "The field 'path' is invalid: '42' is not a path prefix (it starts with '/', and has plain segments).",
        );
    herve.stop().await;
}

#[tokio::test]
async fn edits_change_routes_and_fields_of_stopped_and_running_services() {
    let herve = TestHerve::start().await;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let registered = herve
        .post_form(
            "/services/register",
            &[("name", "web"), ("type", "proxy"), ("upstream", &a.url())],
        )
        .await;
    let uuid = registered.json()["data"]["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();

    // Stopped: the new definition is kept, nothing runs.
    let edited = herve
        .patch(
            &uuid,
            &[("description", "The shop"), ("hosts", "shop.test")],
        )
        .await;
    edited.expect(200, "The service has been successfully updated.");
    assert_eq!(edited.json()["data"]["description"], "The shop");
    assert_eq!(edited.json()["data"]["status"], "registered");
    assert_eq!(edited.json()["data"]["uuid"], uuid);
    herve
        .start(&uuid)
        .await
        .expect(200, "The service has successfully started.");
    assert_eq!(answered_by(&herve, "shop.test", "/id").await, "a");

    // Running, routes only: moved at once, the same instance (no restart).
    let pid_like =
        herve.admin_get(&format!("/services/{uuid}")).await.json()["data"]["runtime"].clone();
    let edited = herve
        .patch(&uuid, &[("hosts", "store.test"), ("path", "/shop")])
        .await;
    edited.expect(200, "The service has been successfully updated.");
    assert!(edited.json()["data"].get("restarted").is_none());
    assert_eq!(get_on(&herve, "shop.test", "/id").await.status, 404);
    assert_eq!(answered_by(&herve, "store.test", "/shop/id").await, "a");
    assert_eq!(
        herve.admin_get(&format!("/services/{uuid}")).await.json()["data"]["runtime"],
        pid_like
    );

    // Running, the type's own field: a new instance to the new upstream.
    herve
        .patch(&uuid, &[("upstream", &b.url())])
        .await
        .expect(200, "The service has been successfully updated.");
    assert_eq!(answered_by(&herve, "store.test", "/shop/id").await, "b");
    assert_eq!(herve.get("/web/id").await.text(), "b");
    let shown = herve.admin_get(&format!("/services/{uuid}")).await.json();
    assert_eq!(shown["data"]["config"]["upstreams"][0], b.url());
    assert_eq!(shown["data"]["status"], "running");

    // A refused edit changes nothing.
    let refused = herve
        .patch(
            &uuid,
            &[("upstream", "ftp://nope"), ("hosts", "other.test")],
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(answered_by(&herve, "store.test", "/shop/id").await, "b");
    assert_eq!(get_on(&herve, "other.test", "/shop/id").await.status, 404);
    herve
        .patch(&uuid, &[("name", "renamed")])
        .await
        .expect(400, "The field 'name' of a service cannot be changed.");
    herve
        .patch(
            "00000000-0000-4000-8000-000000000000",
            &[("hosts", "x.test")],
        )
        .await
        .expect(404, "The service does not exist.");

    // Back to the type's description, and no routes but uuid and name.
    let edited = herve
        .patch(&uuid, &[("description", ""), ("hosts", ""), ("path", "")])
        .await;
    edited.expect(200, "The service has been successfully updated.");
    assert_eq!(
        edited.json()["data"]["description"],
        "A service routing requests to existing HTTP servers"
    );
    assert!(edited.json()["data"].get("hosts").is_none());
    assert_eq!(get_on(&herve, "store.test", "/shop/id").await.status, 404);
    assert_eq!(herve.get("/web/id").await.text(), "b");

    // Running, the description alone: shown at once, the same instance.
    let edited = herve.patch(&uuid, &[("description", "Front door")]).await;
    edited.expect(200, "The service has been successfully updated.");
    assert_eq!(edited.json()["data"]["description"], "Front door");
    assert!(edited.json()["data"].get("restarted").is_none());

    // Stopped, the path and the type's own field: kept, and used at the next start.
    herve
        .stop_service(&uuid)
        .await
        .expect(200, "The service has successfully stopped.");
    let edited = herve
        .patch(&uuid, &[("path", "/door"), ("upstream", &a.url())])
        .await;
    edited.expect(200, "The service has been successfully updated.");
    assert_eq!(edited.json()["data"]["status"], "stopped");
    assert_eq!(edited.json()["data"]["path"], "/door");
    assert_eq!(get_on(&herve, "any.test", "/door/id").await.status, 404);
    herve
        .start(&uuid)
        .await
        .expect(200, "The service has successfully started.");
    assert_eq!(answered_by(&herve, "any.test", "/door/id").await, "a");
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_under_load_loses_no_request() {
    let herve = TestHerve::start().await;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let uuid = proxy_to(&herve, "busy", &a, &[("hosts", "busy.test")]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (client, stop, sent, failed) = (
            herve.client.clone(),
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&failed),
        );
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let reply = get_on(&client, "busy.test", "/id").await;
                sent.fetch_add(1, Ordering::Relaxed);
                if reply.status != 200 || !matches!(reply.text().as_str(), "a" | "b") {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for round in 0..10 {
        let upstream = if round % 2 == 0 { b.url() } else { a.url() };
        herve
            .patch(&uuid, &[("upstream", &upstream)])
            .await
            .expect(200, "The service has been successfully updated.");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in loops {
        task.await.expect("loop");
    }
    assert!(
        sent.load(Ordering::Relaxed) > 100,
        "too few requests to tell"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the edits"
    );
    herve.stop().await;
}

#[tokio::test]
async fn a_program_on_a_fixed_port_is_restarted_by_an_edit() {
    let herve = TestHerve::start().await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port().to_string()
    };
    let command = "python3 -m http.server $PORT --bind 127.0.0.1";
    let uuid = herve
        .running_with("fixed", "process", &[("command", command), ("port", &port)])
        .await;
    let edited = herve.patch(&uuid, &[("stop_timeout_ms", "500")]).await;
    edited.expect(200, "The service has been successfully updated.");
    assert_eq!(edited.json()["data"]["restarted"], true);
    assert_eq!(edited.json()["data"]["status"], "running");
    assert_eq!(herve.get("/fixed/").await.status, 200);
    // Only routes: nothing restarted.
    let edited = herve.patch(&uuid, &[("hosts", "fixed.test")]).await;
    assert!(
        edited.json()["data"].get("restarted").is_none(),
        "{}",
        edited.text()
    );
    herve.stop_service(&uuid).await;
    herve.stop().await;
}

#[tokio::test]
async fn the_admin_api_can_have_an_address_of_its_own() {
    let admin_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let herve = TestHerve::start_with(|c| {
        c.admin_addr = Some(([127, 0, 0, 1], admin_port).into());
    })
    .await;
    let admin = HttpClient::new(([127, 0, 0, 1], admin_port).into());
    let uuid = admin.running("pub", "ping").await;
    // Public port: services and /health, no admin API (not even its 401).
    assert_eq!(herve.get(&format!("/{uuid}/ping")).await.text(), "pong\n");
    assert_eq!(herve.get("/health").await.status, 200);
    let services = herve.admin_get("/services").await;
    assert_eq!(services.status, 404, "{}", services.text());
    assert_eq!(herve.get("/services").await.status, 404);
    // Admin address: the admin API, and no service traffic.
    assert_eq!(admin.list().await.len(), 1);
    assert_eq!(admin.get("/health").await.status, 200);
    assert_eq!(admin.get("/services").await.status, 401);
    assert_eq!(admin.get(&format!("/{uuid}/ping")).await.status, 404);
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_survive_a_restart_and_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let herve = BinHerve::spawn(dir.path(), &[("HERVE_ACCESS_LOG", "false")]);
    let client = herve.client();
    let uuid = client
        .running_with(
            "kept",
            "ping",
            &[
                ("hosts", "kept.test"),
                ("path", "/p"),
                ("description", "Kept"),
            ],
        )
        .await;
    client
        .patch(&uuid, &[("hosts", "kept.test,*.kept.test")])
        .await
        .expect(200, "The service has been successfully updated.");
    drop(herve); // SIGTERM
    let mut herve = BinHerve::spawn(dir.path(), &[("HERVE_ACCESS_LOG", "false")]);
    let client = herve.client();
    assert_eq!(
        answered_by(&client, "a.kept.test", "/p/ping").await,
        "pong\n"
    );
    herve.signal(libc::SIGKILL);
    herve.wait(Duration::from_secs(10));
    let herve = BinHerve::spawn(dir.path(), &[("HERVE_ACCESS_LOG", "false")]);
    let client = herve.client();
    assert_eq!(answered_by(&client, "kept.test", "/p/ping").await, "pong\n");
    let shown: Value = client.admin_get(&format!("/services/{uuid}")).await.json();
    assert_eq!(
        shown["data"]["hosts"],
        serde_json::json!(["kept.test", "*.kept.test"])
    );
    assert_eq!(shown["data"]["path"], "/p");
    assert_eq!(shown["data"]["description"], "Kept");
}
