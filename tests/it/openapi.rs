//! `GET /openapi.json`: an OpenAPI 3.1 document of the admin API, and schemathesis
//! (from PyPI) run against a real Herve with it: no 5xx, every status, content type and
//! body as documented.

use std::path::Path;

use crate::support::{TestHerve, ADMIN_ID, ADMIN_SECRET};

/// The schemathesis the test runs, pinned.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// A virtual environment with schemathesis in `target/`, made once.
async fn schemathesis() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/schemathesis-venv");
    let program = venv.join("bin/schemathesis");
    if !program.is_file() {
        let made = tokio::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .await
            .expect("python3 runs");
        assert!(made.success(), "python3 -m venv failed");
        let installed = tokio::process::Command::new(venv.join("bin/pip"))
            .args(["install", "-q", SCHEMATHESIS])
            .status()
            .await
            .expect("pip runs");
        assert!(installed.success(), "pip install {SCHEMATHESIS} failed");
    }
    program
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_covers_the_admin_api_and_schemathesis_finds_nothing() {
    let herve = TestHerve::start().await;
    let reply = herve.admin_get("/openapi.json").await;
    assert_eq!(reply.status, 200);
    let document = reply.json();
    assert!(document["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1")));
    let paths: Vec<&str> = document["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    for path in [
        "/services",
        "/services/register",
        "/services/{uuid}",
        "/services/{uuid}/start",
        "/services/{uuid}/stop",
        "/services/{uuid}/restart",
        "/services/{uuid}/reload",
        "/services/{uuid}/unregister",
        "/services/{uuid}/logs",
        "/services/status",
        "/services/types",
        "/services/apply",
        "/certificates",
        "/certificates/{host}",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains(&path), "{path} is not documented: {paths:?}");
    }
    assert_eq!(herve.get("/openapi.json").await.status, 401);

    let program = schemathesis().await;
    let output = tokio::process::Command::new(program)
        .arg("run")
        .arg(format!("http://{}/openapi.json", herve.addr))
        .args(["--auth", &format!("{ADMIN_ID}:{ADMIN_SECRET}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "25",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        // It keeps a cache where it runs: in target/, not in the repository.
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(300), output)
        .await
        .expect("schemathesis ends")
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
    herve.stop().await;
}
