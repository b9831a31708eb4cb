//! A browser holding the admin's credentials cannot be made to change anything by
//! another site: every state-changing endpoint refuses a cross-site request (by
//! `Origin` or `Sec-Fetch-Site`) with 403, even with valid Basic credentials, while
//! clients that send neither (curl, the CLI) and Herve's own origin go through.

use hyper::Method;

use crate::support::{Auth, TestHerve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_are_refused_on_every_state_changing_endpoint() {
    let herve = TestHerve::start().await;
    let uuid = herve.running("target", "echo").await;
    let same_origin = format!("http://{}", herve.addr);
    let form = "name=planted&type=echo";
    let endpoints: Vec<(Method, String, &str)> = vec![
        (Method::POST, "/services/register".to_owned(), form),
        (
            Method::PATCH,
            format!("/services/{uuid}"),
            "description=defaced",
        ),
        (Method::POST, format!("/services/{uuid}/stop"), ""),
        (Method::POST, format!("/services/{uuid}/start"), ""),
        (Method::POST, format!("/services/{uuid}/restart"), ""),
        (Method::POST, format!("/services/{uuid}/reload"), ""),
        (Method::POST, format!("/services/{uuid}/unregister"), ""),
        (
            Method::POST,
            "/services/apply".to_owned(),
            r#"{"services":[],"prune":true}"#,
        ),
        (Method::PUT, "/certificates/evil.example".to_owned(), "x"),
        (Method::DELETE, "/certificates/evil.example".to_owned(), ""),
    ];
    let hostile: [&[(&str, &str)]; 5] = [
        &[("origin", "http://evil.example")],
        &[("origin", "null")],
        &[("sec-fetch-site", "cross-site")],
        &[
            ("sec-fetch-site", "same-site"),
            ("origin", "http://sub.evil.example"),
        ],
        // Sec-Fetch-Site decides when a browser sends it, whatever Origin says.
        &[
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://127.0.0.1"),
        ],
    ];
    for (method, path, body) in &endpoints {
        let content_type = if body.starts_with('{') {
            "application/json"
        } else {
            "application/x-www-form-urlencoded"
        };
        for headers in hostile {
            let mut all = headers.to_vec();
            all.push(("content-type", content_type));
            let reply = herve
                .send(method.clone(), path, Auth::Admin, &all, body.to_string())
                .await;
            assert_eq!(
                reply.status,
                403,
                "{method} {path} {headers:?}: {}",
                reply.text()
            );
            assert_eq!(
                reply.message(),
                "Cross-site requests to the admin API are refused."
            );
        }
    }
    // Nothing changed.
    let shown = herve.admin_get(&format!("/services/{uuid}")).await.json();
    assert_eq!(shown["data"]["status"], "running");
    assert_ne!(shown["data"]["description"], "defaced");
    assert_eq!(herve.list().await.len(), 1);

    // Herve's own origin, a navigation the user typed, and clients without either.
    let ok = herve
        .send(
            Method::PATCH,
            &format!("/services/{uuid}"),
            Auth::Admin,
            &[
                ("origin", &same_origin),
                ("sec-fetch-site", "same-origin"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            "description=ours",
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let plain = herve
        .send(
            Method::POST,
            &format!("/services/{uuid}/restart"),
            Auth::Admin,
            &[],
            "",
        )
        .await;
    assert_eq!(plain.status, 200, "{}", plain.text());
    // Reading stays possible (browsers keep other sites from reading the answers).
    let read = herve
        .send(
            Method::GET,
            "/services",
            Auth::Admin,
            &[("origin", "http://evil.example")],
            "",
        )
        .await;
    assert_eq!(read.status, 200);
    herve.stop().await;
}
