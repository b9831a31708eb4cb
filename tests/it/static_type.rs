//! The `static` type: files served whole, conditionally, by ranges, and never from
//! outside the root.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;

use crate::support::*;

struct Site {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn site() -> Site {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("www");
    std::fs::create_dir_all(root.join("docs/deep")).expect("mkdir");
    std::fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    std::fs::write(root.join("index.html"), "<h1>home</h1>").expect("write");
    std::fs::write(root.join("docs/index.html"), "<h1>docs</h1>").expect("write");
    std::fs::write(root.join("docs/deep/note.txt"), "deep note").expect("write");
    std::fs::write(root.join("style.css"), "body{}").expect("write");
    std::fs::write(root.join("data.json"), "{}").expect("write");
    std::fs::write(root.join("with space.txt"), "spaced").expect("write");
    let binary: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    std::fs::write(root.join("blob.bin"), &binary).expect("write");
    let outside = dir.path().join("secret.txt");
    std::fs::write(&outside, "TOP SECRET").expect("write");
    std::os::unix::fs::symlink(&outside, root.join("escape.txt")).expect("symlink");
    std::os::unix::fs::symlink(dir.path(), root.join("escape-dir")).expect("symlink");
    std::os::unix::fs::symlink(root.join("style.css"), root.join("inside-link.css"))
        .expect("symlink");
    Site {
        _dir: dir,
        root,
        outside,
    }
}

async fn static_service(herve: &HttpClient, name: &str, fields: &[(&str, &str)]) -> String {
    herve.running_with(name, "static", fields).await
}

#[tokio::test]
async fn files_are_served_with_type_length_and_validators() {
    let herve = TestHerve::start().await;
    let site = site();
    let root = site.root.to_string_lossy().into_owned();
    let uuid = static_service(&herve, "www", &[("root", &root)]).await;

    let home = herve.get(&format!("/{uuid}/")).await;
    assert_eq!(home.status, 200);
    assert_eq!(home.text(), "<h1>home</h1>");
    assert_eq!(
        home.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(home.header("content-length"), Some("13"));
    assert_eq!(herve.get(&format!("/{uuid}")).await.text(), "<h1>home</h1>");
    assert_eq!(
        herve.get(&format!("/{uuid}/docs")).await.text(),
        "<h1>docs</h1>"
    );
    assert_eq!(
        herve.get(&format!("/{uuid}/docs/")).await.text(),
        "<h1>docs</h1>"
    );
    assert_eq!(
        herve
            .get(&format!("/{uuid}/docs/deep/note.txt"))
            .await
            .text(),
        "deep note"
    );
    assert_eq!(
        herve.get(&format!("/{uuid}/with%20space.txt")).await.text(),
        "spaced"
    );
    assert_eq!(
        herve.get(&format!("/{uuid}/inside-link.css")).await.text(),
        "body{}"
    );
    let css = herve.get(&format!("/{uuid}/style.css")).await;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    let json = herve.get(&format!("/{uuid}/data.json")).await;
    assert_eq!(json.header("content-type"), Some("application/json"));

    let blob = herve.get(&format!("/{uuid}/blob.bin")).await;
    let expected: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    assert!(blob.body[..] == expected[..], "binary file altered");
    assert_eq!(
        blob.header("content-type"),
        Some("application/octet-stream")
    );

    // HEAD: the same headers, no body.
    let head = herve
        .send(
            Method::HEAD,
            &format!("/{uuid}/blob.bin"),
            Auth::None,
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("100000"));
    assert!(head.body.is_empty());

    for missing in ["nope.txt", "docs/nope", "empty-dir", "empty-dir/"] {
        assert_eq!(
            herve.get(&format!("/{uuid}/{missing}")).await.status,
            404,
            "{missing}"
        );
    }
    let post = herve
        .send(
            Method::POST,
            &format!("/{uuid}/index.html"),
            Auth::None,
            &[],
            "x",
        )
        .await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET,HEAD"));
    herve.stop().await;
}

#[tokio::test]
async fn conditional_requests_get_304() {
    let herve = TestHerve::start().await;
    let site = site();
    let root = site.root.to_string_lossy().into_owned();
    let uuid = static_service(&herve, "www", &[("root", &root)]).await;
    let path = format!("/{uuid}/style.css");
    let first = herve.get(&path).await;
    let etag = first.header("etag").expect("etag").to_owned();
    let modified = first
        .header("last-modified")
        .expect("last-modified")
        .to_owned();

    let again = herve
        .send(
            Method::GET,
            &path,
            Auth::None,
            &[("if-none-match", &etag)],
            Bytes::new(),
        )
        .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let listed = format!("\"nope\", {etag}");
    let again = herve
        .send(
            Method::GET,
            &path,
            Auth::None,
            &[("if-none-match", &listed)],
            Bytes::new(),
        )
        .await;
    assert_eq!(again.status, 304);
    let other = herve
        .send(
            Method::GET,
            &path,
            Auth::None,
            &[("if-none-match", "\"other\"")],
            Bytes::new(),
        )
        .await;
    assert_eq!(other.status, 200);

    let since = herve
        .send(
            Method::GET,
            &path,
            Auth::None,
            &[("if-modified-since", &modified)],
            Bytes::new(),
        )
        .await;
    assert_eq!(since.status, 304);
    let old = "Mon, 01 Jan 2001 00:00:00 GMT";
    let stale = herve
        .send(
            Method::GET,
            &path,
            Auth::None,
            &[("if-modified-since", old)],
            Bytes::new(),
        )
        .await;
    assert_eq!(stale.status, 200);
    let garbage = herve
        .send(
            Method::GET,
            &path,
            Auth::None,
            &[("if-modified-since", "yesterday")],
            Bytes::new(),
        )
        .await;
    assert_eq!(garbage.status, 200);

    // A changed file gets a new validator.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(site.root.join("style.css"), "body{color:red}").expect("write");
    let changed = herve
        .send(
            Method::GET,
            &path,
            Auth::None,
            &[("if-none-match", &etag)],
            Bytes::new(),
        )
        .await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.text(), "body{color:red}");
    herve.stop().await;
}

#[tokio::test]
async fn byte_ranges_are_206_or_416() {
    let herve = TestHerve::start().await;
    let site = site();
    let root = site.root.to_string_lossy().into_owned();
    let uuid = static_service(&herve, "www", &[("root", &root)]).await;
    let path = format!("/{uuid}/blob.bin");
    let all: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    type Case<'a> = (&'a str, u16, Option<(usize, usize)>);
    let cases: &[Case] = &[
        ("bytes=0-9", 206, Some((0, 9))),
        ("bytes=99990-", 206, Some((99_990, 99_999))),
        ("bytes=-5", 206, Some((99_995, 99_999))),
        ("bytes=500-999999", 206, Some((500, 99_999))),
        ("bytes=100000-", 416, None),
        ("bytes=200000-300000", 416, None),
        ("bytes=-0", 416, None),
        ("bytes=9-1", 200, None),
        ("items=0-1", 200, None),
        ("bytes=0-1,5-6", 200, None),
    ];
    for (range, status, span) in cases {
        let reply = herve
            .send(
                Method::GET,
                &path,
                Auth::None,
                &[("range", range)],
                Bytes::new(),
            )
            .await;
        assert_eq!(reply.status.as_u16(), *status, "{range}");
        match (status, span) {
            (206, Some((start, end))) => {
                assert_eq!(&reply.body[..], &all[*start..=*end], "{range}");
                assert_eq!(
                    reply.header("content-range"),
                    Some(format!("bytes {start}-{end}/100000").as_str())
                );
            }
            (416, _) => assert_eq!(reply.header("content-range"), Some("bytes */100000")),
            _ => assert_eq!(reply.body.len(), 100_000, "{range}"),
        }
    }
    // If-Range with the current validator: the range (and the unit in any case).
    let etag = herve
        .get(&path)
        .await
        .header("etag")
        .expect("etag")
        .to_owned();
    let fresh = herve
        .send(
            Method::GET,
            &path,
            Auth::None,
            &[("range", "Bytes=0-9"), ("if-range", &etag)],
            Bytes::new(),
        )
        .await;
    assert_eq!(fresh.status, 206);
    assert_eq!(fresh.body.len(), 10);
    // If-Range with a stale validator: the whole file.
    let stale = herve
        .send(
            Method::GET,
            &path,
            Auth::None,
            &[("range", "bytes=0-9"), ("if-range", "\"stale\"")],
            Bytes::new(),
        )
        .await;
    assert_eq!(stale.status, 200);
    herve.stop().await;
}

#[tokio::test]
async fn nothing_outside_the_root_is_ever_served() {
    let herve = TestHerve::start().await;
    let site = site();
    let root = site.root.to_string_lossy().into_owned();
    let uuid = static_service(&herve, "www", &[("root", &root)]).await;
    let spa = static_service(&herve, "spa", &[("root", &root), ("spa", "true")]).await;
    let outside = site.outside.to_string_lossy().into_owned();
    let hostile = [
        "../secret.txt".to_owned(),
        "..%2fsecret.txt".to_owned(),
        "%2e%2e/secret.txt".to_owned(),
        "%2e%2e%2fsecret.txt".to_owned(),
        "%2E%2E%2Fsecret.txt".to_owned(),
        "docs/../../secret.txt".to_owned(),
        "docs/%2e%2e/%2e%2e/secret.txt".to_owned(),
        "./../secret.txt".to_owned(),
        "..".to_owned(),
        "%2e%2e".to_owned(),
        "..%5csecret.txt".to_owned(),
        "..\\secret.txt".to_owned(),
        "%252e%252e/secret.txt".to_owned(),
        "escape.txt".to_owned(),
        "escape-dir/secret.txt".to_owned(),
        "escape-dir/".to_owned(),
        outside.clone(),
        format!("/{outside}"),
        format!("%2f{}", outside.trim_start_matches('/')),
        "/etc/passwd".to_owned(),
        "%2fetc%2fpasswd".to_owned(),
        "..%00/secret.txt".to_owned(),
        "index.html%00.txt".to_owned(),
        "%c0%ae%c0%ae/secret.txt".to_owned(),
        "%ff".to_owned(),
        "docs/deep/../../../secret.txt".to_owned(),
    ];
    assert!(hostile.len() >= 20);
    let addr = herve.addr;
    for target in [&uuid, &spa] {
        for path in &hostile {
            // Raw TCP: an HTTP client library would normalise `..` away before sending.
            let request =
                format!("GET /{target}/{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let answer = tokio::task::spawn_blocking(move || {
                raw_exchange(addr, request.as_bytes(), Duration::from_secs(5))
            })
            .await
            .expect("join");
            let text = String::from_utf8_lossy(&answer);
            assert!(!text.contains("TOP SECRET"), "{path} leaked: {text}");
            assert!(!text.contains("root:"), "{path} leaked /etc/passwd");
            // Even a single-page app, which answers missing paths with its index,
            // refuses these outright (400: hyper's own refusal of a malformed target).
            // Other paths (an absolute path, a double-encoded name) just name missing
            // files inside the root, which a single-page app answers with its index.
            let status = raw_status(&answer);
            let lowered = path.to_lowercase();
            let escape_attempt = lowered.contains("..")
                || lowered.contains("%2e%2e")
                || lowered.starts_with("escape");
            let literal_name = target == &spa && !escape_attempt;
            if literal_name && status == Some(200) {
                assert!(text.ends_with("<h1>home</h1>"), "{path}: {text}");
            } else {
                assert!(matches!(status, Some(404) | Some(400)), "{path}: {text}");
            }
        }
    }
    herve.stop().await;
}

#[tokio::test]
async fn single_page_apps_fall_back_to_the_index() {
    let herve = TestHerve::start().await;
    let site = site();
    let root = site.root.to_string_lossy().into_owned();
    let uuid = static_service(
        &herve,
        "spa",
        &[("root", &root), ("spa", "true"), ("index", "index.html")],
    )
    .await;
    assert_eq!(
        herve.get(&format!("/{uuid}/app/route/42")).await.text(),
        "<h1>home</h1>"
    );
    assert_eq!(
        herve.get(&format!("/{uuid}/style.css")).await.text(),
        "body{}"
    );
    herve.stop().await;
}

#[tokio::test]
async fn static_registration_is_validated() {
    let herve = TestHerve::start().await;
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "'root'"),
        (&[("root", "/no/such/dir")], "'root'"),
        (&[("root", "/etc/hostname")], "'root'"),
        (&[("root", "/tmp"), ("index", "a/b.html")], "'index'"),
        (&[("root", "/tmp"), ("spa", "maybe")], "'spa'"),
    ];
    for (fields, named) in cases {
        let mut all = vec![("name", "s"), ("type", "static")];
        all.extend_from_slice(fields);
        let reply = herve.post_form("/services/register", &all).await;
        assert_eq!(reply.status, 400, "{fields:?}: {}", reply.text());
        assert!(
            reply.message().contains(named),
            "{fields:?}: {}",
            reply.text()
        );
    }
    herve.stop().await;
}

#[tokio::test]
async fn a_50_mib_file_streams_with_bounded_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("big");
    std::fs::create_dir_all(&root).expect("mkdir");
    let mut file = std::fs::File::create(root.join("big.bin")).expect("create");
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i % 253) as u8).collect();
    for _ in 0..50 {
        file.write_all(&chunk).expect("write");
    }
    drop(file);
    let herve = BinHerve::spawn(dir.path(), &[("HERVE_ACCESS_LOG", "false")]);
    let client = herve.client();
    let root = root.to_string_lossy().into_owned();
    let uuid = static_service(&client, "big", &[("root", &root)]).await;
    let before = rss_kib(herve.child.id());
    let (addr, pid) = (herve.addr, herve.child.id());
    let (received, peak, intact) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .write_all(
                format!("GET /{uuid}/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .expect("write");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("head");
            head.push(byte[0]);
        }
        let mut buf = vec![0u8; 256 * 1024];
        let (mut received, mut peak, mut intact) = (0usize, 0u64, true);
        loop {
            let n = stream.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            intact &= buf[..n]
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (((received + i) % (1024 * 1024)) % 253) as u8);
            received += n;
            if received % (4 << 20) < n {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        (received, peak, intact)
    })
    .await
    .expect("reader");
    assert_eq!(received, 50 * 1024 * 1024);
    assert!(intact, "the file arrived altered");
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 32,
        "RSS grew by {growth_mib} MiB while serving 50 MiB"
    );
}
