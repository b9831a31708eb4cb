//! The `herve` binary as a client of a real Herve: every command, `--json`, exit codes,
//! where credentials come from, a server that is down; and `herve.toml` through
//! `apply`, `diff` and `export`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{herve_command, BinHerve, TestHerve, ADMIN_ID, ADMIN_SECRET};

/// What a CLI run gave.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(self.ok()).expect("JSON on stdout")
    }
}

/// Runs `herve ARGS` in `dir` with only `env` (and PATH) in its environment.
pub async fn cli(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_herve"));
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the CLI ends")
        .expect("the CLI runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The environment that points the CLI at an in-process test Herve.
pub fn env_for(herve: &TestHerve) -> Vec<(&'static str, String)> {
    vec![
        ("HERVE_URL", format!("http://{}", herve.addr)),
        ("HERVE_ADMIN_ID", ADMIN_ID.to_owned()),
        ("HERVE_ADMIN_SECRET", ADMIN_SECRET.to_owned()),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_the_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No credentials configured: the server generates a secret in its data directory,
    // and the CLI, run beside it, finds it there.
    let mut server = BinHerve::spawn_command(herve_command(dir.path()));
    let data = dir.path().join("data");
    let data_str = data.to_string_lossy().into_owned();
    let port = server.addr.port().to_string();
    let env = [
        ("PORT", port.as_str()),
        ("HERVE_DATA_DIR", data_str.as_str()),
    ];

    let status = cli(dir.path(), &env, &["status"]).await;
    assert!(status.ok().contains("0 service(s)"), "{}", status.stdout);
    assert!(status.stdout.contains(env!("CARGO_PKG_VERSION")));

    let registered = cli(
        dir.path(),
        &env,
        &[
            "register",
            "echo",
            "talk",
            "description=says it back",
            "path=/talk",
        ],
    )
    .await;
    assert!(
        registered.ok().contains("registered talk"),
        "{}",
        registered.stdout
    );
    cli(dir.path(), &env, &["start", "talk"]).await.ok();
    let reply = server.client().post_form("/talk/echo", &[("x", "1")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let listing = cli(dir.path(), &env, &["ls"]).await;
    let lines: Vec<&str> = listing.ok().lines().collect();
    assert_eq!(lines.len(), 2, "{}", listing.stdout);
    assert!(lines[0].starts_with("NAME"));
    assert!(lines[1].starts_with("talk"));
    // Aligned columns, and no colour when stdout is not a terminal.
    assert_eq!(
        lines[0].find("STATUS"),
        lines[1].find("running"),
        "{}",
        listing.stdout
    );
    assert!(!listing.stdout.contains('\x1b'));
    assert!(lines[1].contains("/talk"));

    let json = cli(dir.path(), &env, &["ls", "--json"]).await.json();
    let uuid = json["data"][0]["uuid"].as_str().expect("uuid").to_owned();
    assert!(json["data"][0]["started_at"].as_u64().is_some());
    let shown = cli(dir.path(), &env, &["show", &uuid]).await;
    assert!(shown.ok().contains("says it back"), "{}", shown.stdout);
    assert_eq!(
        cli(dir.path(), &env, &["show", "talk", "--json"])
            .await
            .json()["data"]["uuid"],
        uuid.as_str()
    );

    let edited = cli(
        dir.path(),
        &env,
        &["edit", "talk", "description=now quieter"],
    )
    .await;
    assert!(edited.ok().contains("edited talk"));
    let described = cli(dir.path(), &env, &["show", "talk", "--json"])
        .await
        .json();
    assert_eq!(described["data"]["description"], "now quieter");

    for command in ["restart", "reload", "stop", "start"] {
        let run = cli(dir.path(), &env, &[command, "talk"]).await;
        run.ok();
    }
    // An echo service keeps no logs: the server says so, exit 1.
    let logs = cli(dir.path(), &env, &["logs", "talk"]).await;
    assert_eq!(logs.code, 1);
    assert!(logs.stderr.contains("keeps no logs"), "{}", logs.stderr);
    // Refused: still running.
    let refused = cli(dir.path(), &env, &["rm", "talk"]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("stopped before"),
        "{}",
        refused.stderr
    );
    cli(dir.path(), &env, &["rm", "--force", "talk"]).await.ok();
    assert!(
        cli(dir.path(), &env, &["ls", "--json"]).await.json()["data"]
            .as_array()
            .expect("data")
            .is_empty()
    );
    let unknown = cli(dir.path(), &env, &["start", "nothing"]).await;
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("No service is named 'nothing'"));

    // Usage: exit 2.
    assert_eq!(cli(dir.path(), &env, &["start"]).await.code, 2);
    assert_eq!(
        cli(dir.path(), &env, &["edit", "talk", "novalue"])
            .await
            .code,
        2
    );
    assert_eq!(
        cli(dir.path(), &env, &["ls", "--url", "ftp://x"])
            .await
            .code,
        2
    );
    let completions = cli(dir.path(), &env, &["completions", "bash"]).await;
    assert!(completions.ok().contains("herve"));
    assert!(completions.stdout.contains("apply"));
    let help = cli(dir.path(), &env, &["help"]).await;
    assert!(help.ok().contains("hash-secret"));

    // Wrong credentials of the client's own: refused, exit 1.
    let mut wrong = env.to_vec();
    wrong.push(("HERVE_ADMIN_SECRET", "not-it"));
    let denied = cli(dir.path(), &wrong, &["ls"]).await;
    assert_eq!(denied.code, 1);
    assert!(denied.stderr.contains("credentials"), "{}", denied.stderr);

    // A server that is down: exit 3, with the URL tried.
    server.signal(libc::SIGTERM);
    server.wait(Duration::from_secs(20));
    let down = cli(dir.path(), &env, &["ls"]).await;
    assert_eq!(down.code, 3, "{}", down.stderr);
    assert!(
        down.stderr.contains(&format!("http://127.0.0.1:{port}")),
        "{}",
        down.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_the_servers_settings_and_a_hash_from_hash_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hashed = {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_herve"));
        command
            .arg("hash-secret")
            .env_clear()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = command.spawn().expect("spawn");
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"s3cret-phrase\n").await.expect("write");
        drop(stdin);
        let output = child.wait_with_output().await.expect("output");
        assert!(output.status.success());
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    assert!(hashed.starts_with("$argon2id$"), "{hashed}");

    let server = BinHerve::spawn(
        dir.path(),
        &[("AUTH_ADMIN_ID", "boss"), ("AUTH_ADMIN_SECRET", &hashed)],
    );
    let url = format!("http://{}", server.addr);
    // The server's variables hold a hash, which is no password: the client's own are
    // needed.
    let with_hash = cli(
        dir.path(),
        &[
            ("HERVE_URL", &url),
            ("AUTH_ADMIN_ID", "boss"),
            ("AUTH_ADMIN_SECRET", &hashed),
        ],
        &["ls"],
    )
    .await;
    assert_eq!(with_hash.code, 1, "{}", with_hash.stderr);
    let own = cli(
        dir.path(),
        &[
            ("HERVE_URL", &url),
            ("HERVE_ADMIN_ID", "boss"),
            ("HERVE_ADMIN_SECRET", "s3cret-phrase"),
        ],
        &["status"],
    )
    .await;
    own.ok();
    // A plain secret in the server's variables serves the client too (`--url` wins
    // over HERVE_URL).
    let plain_dir = tempfile::tempdir().expect("tempdir");
    let plain = BinHerve::spawn(
        plain_dir.path(),
        &[
            ("AUTH_ADMIN_ID", "boss"),
            ("AUTH_ADMIN_SECRET", "plain-secret-1"),
        ],
    );
    let run = cli(
        plain_dir.path(),
        &[
            ("HERVE_URL", "http://127.0.0.1:1"),
            ("AUTH_ADMIN_ID", "boss"),
            ("AUTH_ADMIN_SECRET", "plain-secret-1"),
        ],
        &[
            "--url",
            &format!("http://{}", plain.addr),
            "status",
            "--json",
        ],
    )
    .await;
    assert_eq!(run.json()["data"]["services"], 0);
}

fn services_file(dir: &Path, app: &Path, description: &str, with_echo: bool) -> std::path::PathBuf {
    let mut text = format!(
        r#"# the shop
[[service]]
name = "web"
type = "process"
command = "python3 {app}"
description = "{description}"
hosts = ["shop.test", "www.shop.test"]
env = ["MODE=prod"]
replicas = 2
"#,
        app = app.display()
    );
    if with_echo {
        text.push_str(
            r#"
[[service]]
name = "talk"
type = "echo"
path = "/talk"
state = "stopped"
"#,
        );
    }
    let path = dir.join("herve.toml");
    std::fs::write(&path, text).expect("write file");
    path
}

fn pids(service: &Value) -> Vec<u64> {
    let mut pids: Vec<u64> = service["runtime"]["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|copy| copy["pid"].as_u64())
        .collect();
    pids.sort_unstable();
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_diff_and_export_converge_and_keep_what_did_not_change() {
    let herve = TestHerve::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("app.py");
    std::fs::write(&app, crate::operations::PID_APP).expect("write app");
    let env = env_for(&herve);
    let env = borrowed(&env);
    let file = services_file(dir.path(), &app, "the shop", true);
    let file_arg = file.to_string_lossy().into_owned();

    let plan = herve_cli(dir.path(), &env, &["diff", "-f", &file_arg]).await;
    assert!(plan.contains("+ create web (process)"), "{plan}");
    assert!(plan.contains("+ create talk (echo)"), "{plan}");
    assert!(plan.contains("> start web"), "{plan}");
    assert!(!plan.contains("start talk"), "{plan}");
    assert!(herve.list().await.is_empty(), "a diff changes nothing");

    let applied = herve_cli(dir.path(), &env, &["apply", "-f", &file_arg]).await;
    assert!(applied.contains("3 change(s) made"), "{applied}");
    let listed = herve_json(dir.path(), &env, &["show", "web"]).await;
    assert_eq!(listed["data"]["status"], "running");
    let uuid = listed["data"]["uuid"].as_str().expect("uuid").to_owned();
    let before = pids(&listed["data"]);
    assert_eq!(before.len(), 2, "{listed}");
    let reply = herve
        .send(
            hyper::Method::GET,
            "/",
            crate::support::Auth::None,
            &[("host", "shop.test")],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        herve_json(dir.path(), &env, &["show", "talk"]).await["data"]["status"],
        "registered"
    );

    // Twice: nothing changes, nothing restarts.
    let again = herve_cli(dir.path(), &env, &["apply", "-f", &file_arg]).await;
    assert!(again.contains("No changes"), "{again}");
    let after = herve_json(dir.path(), &env, &["show", "web"]).await;
    assert_eq!(
        pids(&after["data"]),
        before,
        "an apply without change restarted"
    );

    // One key changed: one line of diff, the same uuid, new programs.
    services_file(dir.path(), &app, "the new shop", true);
    let one = herve_cli(dir.path(), &env, &["diff", "-f", &file_arg]).await;
    let changes: Vec<&str> = one.lines().filter(|l| !l.ends_with("to make.")).collect();
    assert_eq!(changes, ["~ update web: description"], "{one}");
    herve_cli(dir.path(), &env, &["apply", "-f", &file_arg]).await;
    let edited = herve_json(dir.path(), &env, &["show", "web"]).await;
    assert_eq!(edited["data"]["uuid"], uuid.as_str());
    assert_eq!(edited["data"]["description"], "the new shop");
    // Only the description changed: the programs run on.
    assert_eq!(pids(&edited["data"]), before);

    // Export applies back to itself.
    let exported = herve_cli(dir.path(), &env, &["export"]).await;
    let export_file = dir.path().join("exported.toml");
    std::fs::write(&export_file, &exported).expect("write export");
    let export_arg = export_file.to_string_lossy().into_owned();
    let same = herve_cli(dir.path(), &env, &["diff", "-f", &export_arg]).await;
    assert!(same.contains("No changes"), "{exported}\n{same}");
    assert!(exported.contains("replicas = 2"), "{exported}");

    // Prune: what the file no longer declares is deleted, only with --prune.
    services_file(dir.path(), &app, "the new shop", false);
    let kept = herve_cli(dir.path(), &env, &["apply", "-f", &file_arg]).await;
    assert!(kept.contains("No changes"), "{kept}");
    let pruning = herve_cli(dir.path(), &env, &["diff", "--prune", "-f", &file_arg]).await;
    assert!(pruning.contains("- delete talk"), "{pruning}");
    herve_cli(dir.path(), &env, &["apply", "--prune", "-f", &file_arg]).await;
    let names: Vec<String> = herve
        .list()
        .await
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["web"]);

    // Stopped by the file.
    let stopped = std::fs::read_to_string(&file)
        .expect("read")
        .replace("replicas = 2", "replicas = 2\nstate = \"stopped\"");
    std::fs::write(&file, stopped).expect("write");
    let stop = herve_cli(dir.path(), &env, &["apply", "-f", &file_arg]).await;
    assert!(stop.contains(". stop web"), "{stop}");
    assert_eq!(
        herve_json(dir.path(), &env, &["show", "web"]).await["data"]["status"],
        "stopped"
    );
    herve.stop().await;
}

async fn herve_cli(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    cli(dir, env, args).await.ok().to_owned()
}

async fn herve_json(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    cli(dir, env, &with_json).await.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_lists_every_problem_with_its_line_and_changes_nothing() {
    let herve = TestHerve::start().await;
    herve.running("taken", "echo").await;
    herve
        .post_form(
            "/services/register",
            &[("name", "owner"), ("type", "echo"), ("path", "/mine")],
        )
        .await
        .expect(201, "The service has been successfully registered.");
    let dir = tempfile::tempdir().expect("tempdir");
    let env = env_for(&herve);
    let env = borrowed(&env);
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"[[service]]
name = "fine"
type = "echo"

[[service]]
name = "nope"
type = "teleporter"

[[service]]
name = "bad-proc"
type = "process"
command = "python3 -c pass"
replicas = 0

[[service]]
name = "thief"
type = "echo"
path = "/mine"

[[service]]
name = "fine"
type = "echo"

[[service]]
name = "taken"
type = "ping"
"#,
    )
    .expect("write");
    let file_arg = file.to_string_lossy().into_owned();
    let run = cli(dir.path(), &env, &["apply", "-f", &file_arg]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    let expect = [
        (7, "teleporter"),
        (13, "replicas"),
        (18, "/mine"),
        (21, "listed twice"),
        (26, "type cannot be changed"),
    ];
    assert_eq!(lines.len(), expect.len(), "{}", run.stderr);
    for (line, (number, words)) in lines.iter().zip(expect) {
        assert!(
            line.starts_with(&format!("{file_arg}:{number}: ")) && line.contains(words),
            "{line} (expected line {number}: {words})\n{}",
            run.stderr
        );
    }
    assert_eq!(herve.list().await.len(), 2, "nothing changed");

    // Problems the file itself has are found before the server is asked.
    std::fs::write(&file, "[[service]]\nname = \"x\"\nstate = \"paused\"\n").expect("write");
    let local = cli(dir.path(), &env, &["diff", "-f", &file_arg]).await;
    assert_eq!(local.code, 1);
    assert!(local.stderr.contains(":3: 'state'"), "{}", local.stderr);
    assert!(
        local.stderr.contains(":1: This service has no 'type'"),
        "{}",
        local.stderr
    );
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_api_calls_wait_for_an_apply_and_a_file_is_applied_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("app.py");
    std::fs::write(&app, crate::operations::PID_APP).expect("write app");
    let file = dir.path().join("herve.toml");
    std::fs::write(
        &file,
        format!(
            "[[service]]\nname = \"slow\"\ntype = \"process\"\ncommand = \"python3 {} 1.5\"\n",
            app.display()
        ),
    )
    .expect("write");
    let data = tempfile::tempdir().expect("data");
    let herve = TestHerve::start_on(data.path()).await;
    let env = env_for(&herve);
    let file_arg = file.to_string_lossy().into_owned();
    let applying = {
        let dir = dir.path().to_path_buf();
        let env: Vec<(&'static str, String)> = env.clone();
        let file_arg = file_arg.clone();
        tokio::spawn(async move {
            let run = cli(&dir, &borrowed(&env), &["apply", "-f", &file_arg]).await;
            (run, Instant::now())
        })
    };
    // While the program gets ready, a registration waits for the apply to end.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reply = herve
        .post_form("/services/register", &[("name", "other"), ("type", "echo")])
        .await;
    let registered_at = Instant::now();
    reply.expect(201, "The service has been successfully registered.");
    let (run, applied_at) = applying.await.expect("apply task");
    run.ok();
    assert!(
        registered_at + Duration::from_millis(50) >= applied_at,
        "the registration did not wait for the apply"
    );
    herve.stop().await;

    // At start: the file is applied (no prune: `other` stays).
    let herve = TestHerve::start_on_with(data.path(), |config| {
        config.services_file = Some(file.clone());
    })
    .await;
    let names: Vec<(String, String)> = herve
        .list()
        .await
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        names.contains(&("slow".to_owned(), "running".to_owned())),
        "{names:?}"
    );
    assert!(names.iter().any(|(name, _)| name == "other"), "{names:?}");
    herve.stop().await;

    // An invalid file stops the start, with its line.
    std::fs::write(&file, "[[service]]\nname = \"x\"\ntype = \"nothing\"\n").expect("write");
    let mut config = crate::support::test_config(data.path());
    config.services_file = Some(file.clone());
    let error = herve::HerveBuilder::new(config)
        .bind()
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("line 3") && error.contains("nothing"),
        "{error}"
    );
}
