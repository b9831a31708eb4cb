//! The programs of `examples/`, each a Herve with a service type of its own: their
//! types are run here over real TCP, as a client of the shipped example would use them.

use bytes::Bytes;
use hyper::Method;

use crate::support::*;
use crate::upstream_server::Upstream;

// The examples' `main` functions are for `cargo run`; only their types are used here.
#[allow(dead_code)]
#[path = "../../examples/echo.rs"]
mod echo;
#[allow(dead_code)]
#[path = "../../examples/groups.rs"]
mod groups;
#[allow(dead_code)]
#[path = "../../examples/guestbook.rs"]
mod guestbook;
#[allow(dead_code)]
#[path = "../../examples/hello_world.rs"]
mod hello_world;
#[allow(dead_code)]
#[path = "../../examples/models.rs"]
mod models;
#[allow(dead_code)]
#[path = "../../examples/proxy.rs"]
mod proxy;
#[allow(dead_code)]
#[path = "../../examples/static_content.rs"]
mod static_content;

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
const JSON: (&str, &str) = ("content-type", "application/json");

fn form(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

#[tokio::test]
async fn hello_world_greets() {
    let herve =
        TestHerve::start_built(|_| {}, |builder| builder.service_type(hello_world::Hello)).await;
    let uuid = herve.running_with("hi", "hello", &[]).await;
    let reply = herve.get(&format!("/{uuid}/")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "Hello, world!\n");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=UTF-8")
    );
    // Without the trailing slash the router still sees `/`.
    assert_eq!(
        herve.get(&format!("/{uuid}")).await.text(),
        "Hello, world!\n"
    );
    herve.stop().await;
}

#[tokio::test]
async fn groups_keep_admin_routes_behind_the_registered_credentials() {
    let herve =
        TestHerve::start_built(|_| {}, |builder| builder.service_type(groups::Groups)).await;
    herve
        .post_form(
            "/services/register",
            &[("name", "g"), ("type", "groups"), ("user", "ann")],
        )
        .await
        .expect(400, "The field 'password' is required.");
    let uuid = herve
        .running_with("g", "groups", &[("user", "ann"), ("password", "s3cret")])
        .await;

    let public = herve.get(&format!("/{uuid}/")).await;
    assert_eq!(public.status, 200);
    assert_eq!(public.text(), "public\n");

    let stats = format!("/{uuid}/admin/stats");
    for auth in [
        Auth::None,
        Auth::Basic("ann", "wrong"),
        Auth::Basic("bob", "s3cret"),
        Auth::Basic("ann", "s3cret-and-more"),
        Auth::Raw("Bearer s3cret"),
    ] {
        let refused = herve.get_as(&stats, auth).await;
        assert_eq!(refused.status, 401, "{}", refused.text());
        assert_eq!(
            refused.header("www-authenticate"),
            Some("Basic realm=\"groups\"")
        );
    }
    // Unknown paths of the group are refused too, not told apart from real ones.
    let unknown = herve.get(&format!("/{uuid}/admin/nothing")).await;
    assert_eq!(unknown.status, 401);

    let allowed = herve.get_as(&stats, Auth::Basic("ann", "s3cret")).await;
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    // The logger over the whole router saw all the requests so far, this one included.
    assert_eq!(allowed.text(), "requests seen: 8\n");
    let unknown = herve
        .get_as(
            &format!("/{uuid}/admin/nothing"),
            Auth::Basic("ann", "s3cret"),
        )
        .await;
    assert_eq!(unknown.status, 404);
    herve.stop().await;
}

#[tokio::test]
async fn models_create_read_update_and_delete_notes() {
    let herve = TestHerve::start_built(|_| {}, |builder| builder.service_type(models::Notes)).await;
    let uuid = herve.running_with("n", "notes", &[]).await;
    let notes = format!("/{uuid}/notes");

    let created = herve
        .send(
            Method::POST,
            &notes,
            Auth::None,
            &[FORM],
            form(&[("text", "buy milk")]),
        )
        .await;
    created.expect(201, "The note has been created.");
    assert_eq!(created.json()["data"]["text"], "buy milk");
    let id = created.json()["data"]["id"].as_u64().expect("id");
    let note = format!("{notes}/{id}");

    let second = herve
        .send(
            Method::POST,
            &notes,
            Auth::None,
            &[JSON],
            r#"{"text":"call Ada"}"#,
        )
        .await;
    assert_eq!(second.status, 201, "{}", second.text());
    let second_id = second.json()["data"]["id"].as_u64().expect("id");
    assert_ne!(second_id, id);

    let listed = herve.get(&notes).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json()["success"], true);
    assert_eq!(listed.json()["data"].as_array().expect("list").len(), 2);

    let read = herve.get(&note).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json()["data"]["text"], "buy milk");

    herve
        .send(
            Method::PUT,
            &note,
            Auth::None,
            &[JSON],
            r#"{"text":"buy bread"}"#,
        )
        .await
        .expect(200, "The note has been updated.");
    assert_eq!(herve.get(&note).await.json()["data"]["text"], "buy bread");

    let long = "x".repeat(201);
    herve
        .send(
            Method::POST,
            &notes,
            Auth::None,
            &[FORM],
            form(&[("text", &long)]),
        )
        .await
        .expect(422, "The field 'text' must be at most 200 characters.");
    herve
        .send(
            Method::PUT,
            &note,
            Auth::None,
            &[FORM],
            form(&[("text", &long)]),
        )
        .await
        .expect(422, "The field 'text' must be at most 200 characters.");
    herve
        .send(
            Method::POST,
            &notes,
            Auth::None,
            &[FORM],
            form(&[("other", "x")]),
        )
        .await
        .expect(422, "The field 'text' is required.");
    // Exactly at the limit, counted in characters rather than bytes.
    let at_limit = "é".repeat(200);
    let fits = herve
        .send(
            Method::POST,
            &notes,
            Auth::None,
            &[FORM],
            form(&[("text", &at_limit)]),
        )
        .await;
    assert_eq!(fits.status, 201, "{}", fits.text());

    herve
        .send(Method::DELETE, &note, Auth::None, &[], Bytes::new())
        .await
        .expect(200, "The note has been deleted.");
    herve
        .get(&note)
        .await
        .expect(404, "The note does not exist.");
    herve
        .send(Method::DELETE, &note, Auth::None, &[], Bytes::new())
        .await
        .expect(404, "The note does not exist.");
    herve
        .send(
            Method::PUT,
            &format!("{notes}/999"),
            Auth::None,
            &[FORM],
            form(&[("text", "x")]),
        )
        .await
        .expect(404, "The note does not exist.");
    herve
        .get(&format!("{notes}/not-a-number"))
        .await
        .expect(404, "The note does not exist.");
    let csv = herve
        .send(
            Method::POST,
            &notes,
            Auth::None,
            &[("content-type", "text/csv")],
            "a,b",
        )
        .await;
    assert_eq!(csv.status, 415, "{}", csv.text());
    assert_eq!(
        herve.get(&notes).await.json()["data"]
            .as_array()
            .expect("list")
            .len(),
        2
    );
    herve.stop().await;
}

#[tokio::test]
async fn echo_answers_bytes_and_queries() {
    let herve =
        TestHerve::start_built(|_| {}, |builder| builder.service_type(echo::EchoPlus)).await;
    let uuid = herve.running_with("e", "echo-plus", &[]).await;
    let path = format!("/{uuid}/echo");

    // Not UTF-8, with a NUL and a CR LF: every byte comes back.
    let bytes: Vec<u8> = (0..=255u8).chain([0, 13, 10, 255]).collect();
    let reply = herve
        .send(Method::POST, &path, Auth::None, &[], bytes.clone())
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.as_ref(), bytes.as_slice());
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=UTF-8")
    );

    let said = herve.get(&format!("{path}?say=hello%20there%21")).await;
    assert_eq!(said.status, 200);
    assert_eq!(said.text(), "hello there!");
    let silent = herve.get(&path).await;
    assert_eq!(silent.status, 400);
    herve.stop().await;
}

#[tokio::test]
async fn proxy_forwards_to_its_upstream_and_says_when_it_is_gone() {
    let herve =
        TestHerve::start_built(|_| {}, |builder| builder.service_type(proxy::Forward)).await;
    for bad in [
        "",
        "ftp://127.0.0.1:21",
        "127.0.0.1:80",
        "http://a@b:1",
        "http://h:1/base",
    ] {
        let reply = herve
            .post_form(
                "/services/register",
                &[("name", "f"), ("type", "forward"), ("to", bad)],
            )
            .await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text());
        assert!(
            reply.message().contains("'to'"),
            "{bad}: {}",
            reply.message()
        );
    }

    let mut upstream = Upstream::start("x").await;
    let uuid = herve
        .running_with("f", "forward", &[("to", &upstream.url())])
        .await;
    let id = herve.get(&format!("/{uuid}/id")).await;
    assert_eq!(id.status, 200);
    assert_eq!(id.text(), "x");

    let echoed = herve
        .send(
            Method::POST,
            &format!("/{uuid}/echo?q=1"),
            Auth::None,
            &[
                ("x-custom", "kept"),
                ("connection", "x-drop"),
                ("x-drop", "no"),
            ],
            "payload",
        )
        .await;
    assert_eq!(echoed.status, 200, "{}", echoed.text());
    let seen = echoed.json();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["uri"], "/echo?q=1");
    assert_eq!(seen["body"], "payload");
    assert_eq!(seen["headers"]["x-custom"], "kept");
    assert_eq!(seen["headers"]["host"], upstream.addr.to_string());
    assert!(seen["headers"].get("x-drop").is_none(), "{seen}");
    // Headers the upstream meant for its own connection stop at the proxy.
    assert!(echoed.header("x-secret-hop").is_none());
    assert!(echoed.header("keep-alive").is_none());

    upstream.kill().await;
    let gone = herve.get(&format!("/{uuid}/id")).await;
    assert_eq!(gone.status, 502);
    assert_eq!(gone.text(), "The upstream server cannot be reached.\n");
    herve.stop().await;
}

#[tokio::test]
async fn static_content_serves_the_root_and_nothing_outside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("www");
    std::fs::create_dir_all(root.join("docs")).expect("mkdir");
    std::fs::write(root.join("index.html"), "<h1>home</h1>").expect("write");
    std::fs::write(root.join("docs/index.html"), "<h1>docs</h1>").expect("write");
    std::fs::write(root.join("style.css"), "body{}").expect("write");
    std::fs::write(root.join("blob.bin"), [0u8, 1, 2]).expect("write");
    let outside = dir.path().join("secret.txt");
    std::fs::write(&outside, "TOP SECRET").expect("write");
    std::os::unix::fs::symlink(&outside, root.join("escape.txt")).expect("symlink");

    let herve =
        TestHerve::start_built(|_| {}, |builder| builder.service_type(static_content::Site)).await;
    let missing = dir.path().join("nowhere").to_string_lossy().into_owned();
    let file = outside.to_string_lossy().into_owned();
    for bad in [missing.as_str(), file.as_str()] {
        let reply = herve
            .post_form(
                "/services/register",
                &[("name", "s"), ("type", "site"), ("root", bad)],
            )
            .await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert!(reply.message().contains("'root'"), "{}", reply.message());
    }
    let root_text = root.to_string_lossy().into_owned();
    let uuid = herve
        .running_with("s", "site", &[("root", &root_text)])
        .await;

    let home = herve.get(&format!("/{uuid}/")).await;
    assert_eq!(home.status, 200);
    assert_eq!(home.text(), "<h1>home</h1>");
    assert_eq!(
        home.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let css = herve.get(&format!("/{uuid}/style.css")).await;
    assert_eq!(css.text(), "body{}");
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    let blob = herve.get(&format!("/{uuid}/blob.bin")).await;
    assert_eq!(blob.body.as_ref(), [0u8, 1, 2]);
    assert_eq!(
        blob.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        herve.get(&format!("/{uuid}/docs/")).await.text(),
        "<h1>docs</h1>"
    );

    for refused in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/docs/../../secret.txt",
        "/docs/%2e%2e/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/escape.txt",
        "/nothing.html",
    ] {
        let reply = herve.get(&format!("/{uuid}{refused}")).await;
        // The service's own refusal: the path did reach it.
        assert_eq!(reply.status, 404, "{refused}: {}", reply.text());
        assert_eq!(reply.text(), "Not found.\n", "{refused}");
    }
    herve.stop().await;
}

/// The value of the hidden `csrf` field of the page.
fn csrf_token(page: &str) -> String {
    let start =
        page.find(r#"name="csrf" value=""#).expect("a csrf field") + r#"name="csrf" value=""#.len();
    let end = page[start..].find('"').expect("end of the value") + start;
    page[start..end].to_owned()
}

/// The `name=value` part of the cookie `name` among the `Set-Cookie` headers.
fn set_cookie(reply: &Reply, name: &str) -> Option<String> {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| value.split(';').next())
        .find(|pair| pair.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

#[tokio::test]
async fn guestbook_signs_through_a_protected_form_and_escapes_what_it_shows() {
    let herve =
        TestHerve::start_built(|_| {}, |builder| builder.service_type(guestbook::Guestbook)).await;
    let uuid = herve.running_with("gb", "guestbook", &[]).await;
    let page = format!("/{uuid}/");

    let first = herve.get(&page).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(first.header("cache-control"), Some("no-store"));
    assert!(first.text().contains("Nobody has signed yet."));
    // Escaped like every value, which a browser reads back as `/<uuid>/`.
    assert!(first
        .text()
        .contains(&format!(r#"action="&#x2f;{uuid}&#x2f;""#)));
    let csrf_cookie = set_cookie(&first, "guestbook_csrf").expect("a csrf cookie");
    let token = csrf_token(&first.text());
    assert!(!token.is_empty());

    let sign = |cookie: String, fields: Vec<(&'static str, String)>| {
        let herve = &herve;
        let page = page.clone();
        async move {
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut headers = vec![FORM];
            if !cookie.is_empty() {
                headers.push(("cookie", cookie.as_str()));
            }
            herve
                .send(Method::POST, &page, Auth::None, &headers, form(&pairs))
                .await
        }
    };
    let entry = |csrf: &str| {
        vec![
            ("name", "Ada".to_owned()),
            ("message", "<script>alert(1)</script> & hi".to_owned()),
            ("csrf", csrf.to_owned()),
        ]
    };

    // Refused: no token, a wrong one, a right one without its cookie or with another's.
    let no_token = sign(
        csrf_cookie.clone(),
        vec![("name", "Ada".to_owned()), ("message", "hi".to_owned())],
    )
    .await;
    assert_eq!(no_token.status, 403, "{}", no_token.text());
    assert_eq!(
        no_token.header("content-type"),
        Some("text/plain; charset=UTF-8")
    );
    assert_eq!(sign(csrf_cookie.clone(), entry("forged")).await.status, 403);
    assert_eq!(sign(String::new(), entry(&token)).await.status, 403);
    assert_eq!(
        sign("guestbook_csrf=other".to_owned(), entry(&token))
            .await
            .status,
        403
    );
    assert!(herve
        .get(&page)
        .await
        .text()
        .contains("Nobody has signed yet."));

    let signed = sign(csrf_cookie.clone(), entry(&token)).await;
    assert_eq!(signed.status, 303, "{}", signed.text());
    assert_eq!(signed.header("location"), Some(page.as_str()));
    let name_cookie = set_cookie(&signed, "guestbook_name").expect("the name remembered");
    assert_eq!(name_cookie, "guestbook_name=Ada");
    // Scoped to this service's paths, out of scripts' reach.
    let attributes = signed
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with("guestbook_name="))
        .expect("the name cookie")
        .to_owned();
    assert!(
        attributes.contains(&format!("Path=/{uuid}")),
        "{attributes}"
    );
    assert!(attributes.contains("HttpOnly"), "{attributes}");

    let shown = herve
        .send(
            Method::GET,
            &page,
            Auth::None,
            &[("cookie", &format!("{csrf_cookie}; {name_cookie}"))],
            Bytes::new(),
        )
        .await;
    let html = shown.text();
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt; &amp; hi"),
        "{html}"
    );
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains(r#"name="name" value="Ada""#), "{html}");
    // The same visitor keeps the same token.
    assert_eq!(csrf_token(&html), token);

    // A name to remember that would break out of the cookie or the attribute.
    let tricky = vec![
        ("name", "\"><b>x; Path=/".to_owned()),
        ("message", "m".to_owned()),
        ("csrf", token.clone()),
    ];
    let signed = sign(csrf_cookie.clone(), tricky).await;
    assert_eq!(signed.status, 303, "{}", signed.text());
    let remembered = set_cookie(&signed, "guestbook_name").expect("the name remembered");
    let again = herve
        .send(
            Method::GET,
            &page,
            Auth::None,
            &[("cookie", &format!("{csrf_cookie}; {remembered}"))],
            Bytes::new(),
        )
        .await;
    assert!(
        again
            .text()
            .contains(r#"value="&quot;&gt;&lt;b&gt;x; Path=&#x2f;""#),
        "{}",
        again.text()
    );

    let empty = sign(
        csrf_cookie.clone(),
        vec![
            ("name", "Ada".to_owned()),
            ("message", " ".to_owned()),
            ("csrf", token.clone()),
        ],
    )
    .await;
    assert_eq!(empty.status, 422);
    herve.stop().await;
}
