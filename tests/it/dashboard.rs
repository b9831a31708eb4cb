//! The dashboard: its session and CSRF rules over HTTP, and the whole of it in Debian's
//! headless Chromium (driven by playwright-core, `tests/ui/dashboard.mjs`), which saves
//! screenshots of the main pages in `target/ui-screenshots/`.

use hyper::Method;

use crate::support::{Auth, TestHerve, ADMIN_ID, ADMIN_SECRET};

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_need_their_csrf_token_and_pages_are_locked_down() {
    let herve = TestHerve::start().await;
    let login = herve.get("/ui/").await;
    assert_eq!(login.status, 200);
    let csp = login
        .header("content-security-policy")
        .expect("a CSP")
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(login.header("x-frame-options"), Some("DENY"));
    assert_eq!(login.header("referrer-policy"), Some("same-origin"));
    assert_eq!(login.header("cache-control"), Some("no-store"));
    assert!(login.text().contains("name=\"secret\""));

    let wrong = herve
        .send(
            Method::POST,
            "/ui/login",
            Auth::None,
            &[("content-type", FORM)],
            "id=root&secret=nope",
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.text().contains("Wrong id or secret."));
    assert!(wrong.header("set-cookie").is_none());
    let offsite = herve
        .send(
            Method::POST,
            "/ui/login",
            Auth::None,
            &[("content-type", FORM), ("origin", "http://evil.example")],
            format!("id={ADMIN_ID}&secret={ADMIN_SECRET}"),
        )
        .await;
    assert_eq!(offsite.status, 403);

    let signed = herve
        .send(
            Method::POST,
            "/ui/login",
            Auth::None,
            &[("content-type", FORM)],
            format!("id={ADMIN_ID}&secret={ADMIN_SECRET}"),
        )
        .await;
    assert_eq!(signed.status, 303, "{}", signed.text());
    let set_cookie = signed.header("set-cookie").expect("a cookie").to_owned();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set_cookie.contains(part), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    let cookie = set_cookie.split(';').next().expect("pair").to_owned();

    let app = herve
        .send(Method::GET, "/ui/", Auth::None, &[("cookie", &cookie)], "")
        .await;
    let page = app.text();
    let token = page
        .split("name=\"csrf\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's token")
        .to_owned();
    assert!(
        page.matches("<script").count() == page.matches("<script src=").count(),
        "no inline script"
    );
    assert_eq!(app.header("cache-control"), Some("no-store"));

    // The cookie reads; a change also needs the token.
    let listed = herve
        .send(
            Method::GET,
            "/services",
            Auth::None,
            &[("cookie", &cookie)],
            "",
        )
        .await;
    assert_eq!(listed.status, 200);
    for headers in [
        vec![("cookie", cookie.as_str()), ("content-type", FORM)],
        vec![
            ("cookie", cookie.as_str()),
            ("content-type", FORM),
            ("x-csrf-token", "guess"),
        ],
    ] {
        let refused = herve
            .send(
                Method::POST,
                "/services/register",
                Auth::None,
                &headers,
                "name=x&type=echo",
            )
            .await;
        assert_eq!(refused.status, 403, "{}", refused.text());
        assert_eq!(
            refused.message(),
            "The dashboard's CSRF token is missing or wrong."
        );
    }
    let with_origin = herve
        .send(
            Method::POST,
            "/services/register",
            Auth::None,
            &[
                ("cookie", &cookie),
                ("content-type", FORM),
                ("x-csrf-token", &token),
                ("origin", "http://evil.example"),
            ],
            "name=x&type=echo",
        )
        .await;
    assert_eq!(with_origin.status, 403);
    let made = herve
        .send(
            Method::POST,
            "/services/register",
            Auth::None,
            &[
                ("cookie", &cookie),
                ("content-type", FORM),
                ("x-csrf-token", &token),
            ],
            "name=x&type=echo",
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text());

    // Types describe their fields, for the register form.
    let types = herve.admin_get("/services/types").await.json();
    let process = types["data"]
        .as_array()
        .expect("types")
        .iter()
        .find(|t| t["name"] == "process")
        .expect("process")
        .clone();
    assert_eq!(process["fields"][0]["name"], "command");
    assert_eq!(process["fields"][0]["required"], true);
    assert!(process["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .any(|f| f["name"] == "env" && f["repeated"] == true));
    // And the fields Herve reads itself, whatever the type.
    let common: Vec<&str> = process["common_fields"]
        .as_array()
        .expect("common fields")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    for field in [
        "hosts",
        "path",
        "protect",
        "rate_limit",
        "cors_origins",
        "compress",
        "node",
    ] {
        assert!(common.contains(&field), "{field} missing from {common:?}");
    }

    // Signing out ends the session.
    let out = herve
        .send(
            Method::POST,
            "/ui/logout",
            Auth::None,
            &[("cookie", &cookie), ("x-csrf-token", &token)],
            "",
        )
        .await;
    assert_eq!(out.status, 204);
    let gone = herve
        .send(
            Method::GET,
            "/services",
            Auth::None,
            &[("cookie", &cookie)],
            "",
        )
        .await;
    assert_eq!(gone.status, 401);
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_headless_chromium() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/ui/dashboard.mjs");
    if !root.join("tests/ui/node_modules/playwright-core").is_dir() {
        // Pinned by tests/ui/package-lock.json.
        let installed = tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(root.join("tests/ui"))
            .status()
            .await
            .expect("npm (Node.js) runs");
        assert!(installed.success(), "npm ci in tests/ui failed");
    }
    let herve = TestHerve::start().await;
    // A certificate, for the certificates view.
    let issued = crate::tls_client::TestCa::new("Dashboard CA").issue(&["ui.test"]);
    let stored = herve
        .send(
            Method::PUT,
            "/certificates/ui.test",
            Auth::Admin,
            &[("content-type", "application/x-pem-file")],
            format!("{}{}", issued.chain, issued.key),
        )
        .await;
    assert_eq!(stored.status, 200, "{}", stored.text());
    let scripts = tempfile::tempdir().expect("tempdir");
    let app = scripts.path().join("ticker.py");
    std::fs::write(&app, crate::operations::TICKER).expect("write");
    // As root, programs run as `nobody`: it must read the script.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(scripts.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let shots = root.join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshots dir");
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .env("HERVE_URL", format!("http://{}", herve.addr))
        .env("ADMIN_ID", crate::support::ADMIN_ID)
        .env("ADMIN_SECRET", crate::support::ADMIN_SECRET)
        .env("APP", &app)
        .env("SHOTS", &shots)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), output)
        .await
        .expect("the browser test ends")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for shot in ["sign-in.png", "services.png", "service.png", "phone.png"] {
        assert!(shots.join(shot).is_file(), "{shot}");
    }
    herve.stop().await;
}
