//! The `models` and `auth` types: every route and error, durability across restarts,
//! concurrent writers.

use std::collections::HashSet;

use bytes::Bytes;
use hyper::Method;
use serde_json::Value;

use crate::support::*;

const SCHEMA: &str = "username:string:32:required,password:string:128:required,age:int,active:bool";

async fn models_service(herve: &HttpClient) -> String {
    herve
        .running_with("users", "models", &[("model", "user"), ("fields", SCHEMA)])
        .await
}

async fn form(herve: &HttpClient, method: Method, path: &str, body: &str) -> Reply {
    herve
        .send(
            method,
            path,
            Auth::None,
            &[("content-type", "application/x-www-form-urlencoded")],
            body.to_owned(),
        )
        .await
}

async fn json(herve: &HttpClient, method: Method, path: &str, body: &str) -> Reply {
    herve
        .send(
            method,
            path,
            Auth::None,
            &[("content-type", "application/json")],
            body.to_owned(),
        )
        .await
}

#[tokio::test]
async fn models_crud_follows_the_table() {
    let herve = TestHerve::start().await;
    let uuid = models_service(&herve).await;
    let base = format!("/{uuid}/user");

    let created = form(
        &herve,
        Method::POST,
        &base,
        "username=ada&password=secret1&age=36&active=true",
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let ada = created.json()["data"].clone();
    assert_eq!(ada["id"], 0, "ids start at 0, as in the first Herve");
    // Keys in order: id, created_at, updated_at, then the schema's.
    let text = created.text();
    let order: Vec<usize> = [
        "\"id\"",
        "\"created_at\"",
        "\"updated_at\"",
        "\"username\"",
        "\"password\"",
        "\"age\"",
        "\"active\"",
    ]
    .iter()
    .map(|key| text.find(key).expect(key))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert_eq!(ada["age"], 36);
    assert_eq!(ada["active"], true);

    let second = json(
        &herve,
        Method::POST,
        &base,
        r#"{"username":"bob","password":"pw","age":7}"#,
    )
    .await;
    assert_eq!(second.status, 201);
    assert_eq!(second.json()["data"]["id"], 1);
    assert_eq!(second.json()["data"]["active"], Value::Null);

    let listed = herve.get(&base).await.json();
    let ids: Vec<i64> = listed["data"]
        .as_array()
        .expect("list")
        .iter()
        .map(|i| i["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, [0, 1]);
    let page = herve.get(&format!("{base}?limit=1&offset=1")).await.json();
    assert_eq!(page["data"][0]["id"], 1);
    assert_eq!(page["data"].as_array().expect("page").len(), 1);
    assert_eq!(herve.get(&format!("{base}?limit=x")).await.status, 400);

    let one = herve.get(&format!("{base}/0")).await;
    assert_eq!(one.json()["data"]["username"], "ada");
    assert_eq!(one.text(), created.text());

    // PUT replaces every field (missing optional ones become null).
    let replaced = form(
        &herve,
        Method::PUT,
        &format!("{base}/0"),
        "username=ada2&password=pw2",
    )
    .await;
    assert_eq!(replaced.status, 200);
    assert_eq!(replaced.json()["data"]["age"], Value::Null);
    assert_eq!(replaced.json()["data"]["created_at"], ada["created_at"]);
    // PUT on a missing id creates (with an id of Herve's).
    let put_new = form(
        &herve,
        Method::PUT,
        &format!("{base}/99"),
        "username=cy&password=pw3",
    )
    .await;
    assert_eq!(put_new.status, 201);
    assert_eq!(put_new.json()["data"]["id"], 2);
    // An absolute Location: relative, `user/2` would resolve under `/user/`.
    assert_eq!(
        put_new.header("location"),
        Some(format!("{base}/2").as_str())
    );

    // PATCH changes only what it is given.
    let patched = form(&herve, Method::PATCH, &format!("{base}/1"), "age=8").await;
    assert_eq!(patched.status, 200);
    assert_eq!(patched.json()["data"]["age"], 8);
    assert_eq!(patched.json()["data"]["username"], "bob");
    assert_eq!(
        form(&herve, Method::PATCH, &format!("{base}/77"), "age=8")
            .await
            .status,
        404
    );

    let deleted = herve
        .send(
            Method::DELETE,
            &format!("{base}/1"),
            Auth::None,
            &[],
            Bytes::new(),
        )
        .await;
    deleted.expect(200, "user model: instance has been deleted");
    herve
        .send(
            Method::DELETE,
            &format!("{base}/1"),
            Auth::None,
            &[],
            Bytes::new(),
        )
        .await
        .expect(404, "user model: instance not found");
    herve
        .get(&format!("{base}/1"))
        .await
        .expect(404, "user model: instance not found");
    // Ids are never reused, not even the highest one after it is deleted.
    herve
        .send(
            Method::DELETE,
            &format!("{base}/2"),
            Auth::None,
            &[],
            Bytes::new(),
        )
        .await
        .expect(200, "user model: instance has been deleted");
    let next = form(&herve, Method::POST, &base, "username=dee&password=pw").await;
    assert_eq!(next.json()["data"]["id"], 3);

    for method in [Method::PUT, Method::PATCH] {
        for bad_id in ["abc", "-1"] {
            let reply = form(
                &herve,
                method.clone(),
                &format!("{base}/{bad_id}"),
                "username=x&password=y",
            )
            .await;
            reply.expect(404, "user model: instance not found");
        }
    }
    // JSON values keep their JSON types: a string is not a number.
    let cases = [
        (r#"{"username":"a","password":"b","age":"36"}"#, "'age'"),
        (r#"{"username":123,"password":"b"}"#, "'username'"),
        (r#"{"username":"a","password":"b","active":1}"#, "'active'"),
        (r#"{"username":"a","password":"b","age":1.5}"#, "'age'"),
        (r#"{"username":["a","b"],"password":"b"}"#, "'username'"),
    ];
    for (body, field) in cases {
        let reply = json(&herve, Method::POST, &base, body).await;
        assert_eq!(reply.status, 422, "{body}");
        assert!(reply.message().contains(field), "{body}: {}", reply.text());
    }
    json(
        &herve,
        Method::POST,
        &base,
        r#"{"username":"a","password":null}"#,
    )
    .await
    .expect(422, "user model: unable to process this content");

    for bad_id in ["abc", "-1", "1.5", "99999999999999999999999", "%00"] {
        let reply = herve.get(&format!("{base}/{bad_id}")).await;
        assert!(
            matches!(reply.status.as_u16(), 404 | 400),
            "{bad_id}: {}",
            reply.status
        );
    }
    herve.stop().await;
}

#[tokio::test]
async fn models_refuse_bad_content_with_422() {
    let herve = TestHerve::start().await;
    let uuid = models_service(&herve).await;
    let base = format!("/{uuid}/user");
    let generic = "user model: unable to process this content";
    for body in [
        "",
        "username=a",
        "password=b",
        "username=a&password=b&colour=red",
        "username=a&password=b&id=9",
        "username=a&password=b&created_at=1",
    ] {
        form(&herve, Method::POST, &base, body)
            .await
            .expect(422, generic);
    }
    json(&herve, Method::POST, &base, "{not json")
        .await
        .expect(422, generic);
    let named: &[(&str, &str)] = &[
        ("username=a&password=b&age=old", "'age'"),
        ("username=a&password=b&age=1.5", "'age'"),
        ("username=a&password=b&active=perhaps", "'active'"),
    ];
    for (body, field) in named {
        let reply = form(&herve, Method::POST, &base, body).await;
        assert_eq!(reply.status, 422, "{body}");
        assert!(reply.message().contains(field), "{body}: {}", reply.text());
    }
    let long = format!("username={}&password=b", "x".repeat(33));
    let reply = form(&herve, Method::POST, &base, &long).await;
    assert_eq!(reply.status, 422);
    assert!(
        reply.message().contains("'username'") && reply.message().contains("32"),
        "{}",
        reply.text()
    );
    // Exactly at the limit, in characters (not bytes).
    let at_limit = format!("username={}&password=b", "é".repeat(32));
    assert_eq!(
        form(&herve, Method::POST, &base, &at_limit).await.status,
        201
    );
    // A required field cannot be emptied by a patch.
    form(&herve, Method::PATCH, &format!("{base}/0"), "username=")
        .await
        .expect(422, generic);
    assert!(
        herve.get(&base).await.json()["data"]
            .as_array()
            .expect("list")
            .len()
            == 1
    );
    herve.stop().await;
}

#[tokio::test]
async fn models_registration_is_validated() {
    let herve = TestHerve::start().await;
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("fields", SCHEMA)], "'model'"),
        (&[("model", "user")], "'fields'"),
        (&[("model", "bad name"), ("fields", SCHEMA)], "'model'"),
        (&[("model", "user"), ("fields", "a:text")], "'fields'"),
        (&[("model", "user"), ("fields", "id:int")], "'fields'"),
    ];
    for (fields, named) in cases {
        let mut all = vec![("name", "m"), ("type", "models")];
        all.extend_from_slice(fields);
        let reply = herve.post_form("/services/register", &all).await;
        assert_eq!(reply.status, 400, "{fields:?}: {}", reply.text());
        assert!(
            reply.message().contains(named),
            "{fields:?}: {}",
            reply.text()
        );
    }
    // The same registration as a JSON body, with the schema as a list.
    let reply = herve
        .send(
            Method::POST,
            "/services/register",
            Auth::Admin,
            &[("content-type", "application/json")],
            r#"{"name":"notes","type":"models","model":"note","fields":["title:string:80:required","score:float"]}"#,
        )
        .await;
    reply.expect(201, "The service has been successfully registered.");
    assert_eq!(
        reply.json()["data"]["config"]["fields"]
            .as_array()
            .expect("fields")
            .len(),
        2
    );
    let notes = reply.json()["data"]["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    herve
        .start(&notes)
        .await
        .expect(200, "The service has successfully started.");
    let scored = json(
        &herve,
        Method::POST,
        &format!("/{notes}/note"),
        r#"{"title":"t","score":4.5}"#,
    )
    .await;
    assert_eq!(scored.json()["data"]["score"], 4.5);
    let by_form = form(
        &herve,
        Method::POST,
        &format!("/{notes}/note"),
        "title=u&score=-2e3",
    )
    .await;
    assert_eq!(by_form.json()["data"]["score"], -2000.0);
    let bad = form(
        &herve,
        Method::POST,
        &format!("/{notes}/note"),
        "title=u&score=NaNa",
    )
    .await;
    assert_eq!(bad.status, 422);
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_lose_nothing() {
    let herve = TestHerve::start().await;
    let uuid = models_service(&herve).await;
    let base = format!("/{uuid}/user");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (client, base) = (herve.client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            form(
                &client,
                Method::POST,
                &base,
                &format!("username=u{i}&password=pw"),
            )
            .await
            .json()["data"]["id"]
                .as_i64()
                .expect("id")
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        assert!(ids.insert(task.await.expect("task")));
    }
    assert_eq!(ids.len(), 40);
    // Many patches of one instance, each to its own field: every one lands.
    let target = format!("{base}/1");
    let patches = [
        ("age", "41"),
        ("active", "true"),
        ("password", "new-pw"),
        ("username", "renamed"),
    ];
    let mut tasks = Vec::new();
    for round in 0..5 {
        for (field, value) in patches {
            let (client, target) = (herve.client.clone(), target.clone());
            let body = format!("{field}={value}");
            tasks.push(tokio::spawn(async move {
                let _ = round;
                form(&client, Method::PATCH, &target, &body)
                    .await
                    .status
                    .as_u16()
            }));
        }
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), 200);
    }
    let final_state = herve.get(&target).await.json()["data"].clone();
    assert_eq!(final_state["age"], 41);
    assert_eq!(final_state["active"], true);
    assert_eq!(final_state["password"], "new-pw");
    assert_eq!(final_state["username"], "renamed");
    let all = herve.get(&format!("{base}?limit=1000")).await.json();
    assert_eq!(all["data"].as_array().expect("list").len(), 40);
    herve.stop().await;
}

async fn auth_service(herve: &HttpClient, ttl: &str) -> String {
    herve
        .running_with("accounts", "auth", &[("token_ttl_s", ttl)])
        .await
}

async fn login(herve: &HttpClient, uuid: &str, user: &str, password: &str) -> Reply {
    form(
        herve,
        Method::POST,
        &format!("/{uuid}/login"),
        &format!("username={user}&password={password}"),
    )
    .await
}

async fn me(herve: &HttpClient, uuid: &str, token: &str) -> Reply {
    herve
        .send(
            Method::GET,
            &format!("/{uuid}/me"),
            Auth::Raw(&format!("Bearer {token}")),
            &[],
            Bytes::new(),
        )
        .await
}

#[tokio::test]
async fn accounts_sign_up_log_in_and_out() {
    let herve = TestHerve::start().await;
    let uuid = auth_service(&herve, "3600").await;
    let signup = form(
        &herve,
        Method::POST,
        &format!("/{uuid}/signup"),
        "username=ada&password=correct-horse",
    )
    .await;
    assert_eq!(signup.status, 201, "{}", signup.text());
    assert_eq!(signup.json()["data"]["username"], "ada");
    assert!(signup.json()["data"].get("password").is_none());
    let taken = json(
        &herve,
        Method::POST,
        &format!("/{uuid}/signup"),
        r#"{"username":"ada","password":"another-one"}"#,
    )
    .await;
    assert_eq!(taken.status, 409);
    let short = form(
        &herve,
        Method::POST,
        &format!("/{uuid}/signup"),
        "username=bob&password=short",
    )
    .await;
    assert_eq!(short.status, 400);
    assert!(short.message().contains("'password'"));
    let nameless = form(
        &herve,
        Method::POST,
        &format!("/{uuid}/signup"),
        "password=long-enough",
    )
    .await;
    assert_eq!(nameless.status, 400);

    let wrong = login(&herve, &uuid, "ada", "wrong-horse").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        login(&herve, &uuid, "nobody", "correct-horse").await.status,
        401
    );
    let ok = login(&herve, &uuid, "ada", "correct-horse").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let token = ok.json()["data"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert!(token.len() >= 22, "token too short for 128 bits");
    let expires = ok.json()["data"]["expires_at"].as_i64().expect("expiry");
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs(),
    )
    .expect("now");
    assert!((now + 3590..=now + 3610).contains(&expires));

    let who = me(&herve, &uuid, &token).await;
    assert_eq!(who.status, 200);
    assert_eq!(who.json()["data"]["username"], "ada");
    assert_eq!(me(&herve, &uuid, "not-a-token").await.status, 401);
    let anonymous = herve.get(&format!("/{uuid}/me")).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));

    let out = herve
        .send(
            Method::POST,
            &format!("/{uuid}/logout"),
            Auth::Raw(&format!("Bearer {token}")),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(out.status, 200);
    assert_eq!(me(&herve, &uuid, &token).await.status, 401);

    // Nothing secret is kept in clear.
    let database = std::fs::read(herve.data_dir.join("herve.db")).expect("db");
    let wal = std::fs::read(herve.data_dir.join("herve.db-wal")).unwrap_or_default();
    for secret in ["correct-horse", token.as_str()] {
        let needle = secret.as_bytes();
        let found = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        assert!(
            !found(&database) && !found(&wal),
            "{secret} stored in clear"
        );
    }
    herve.stop().await;
}

#[tokio::test]
async fn repeated_failures_are_throttled_per_username() {
    let herve = TestHerve::start().await;
    let uuid = auth_service(&herve, "3600").await;
    for user in ["ada", "bob"] {
        let body = format!("username={user}&password=correct-horse");
        assert_eq!(
            form(&herve, Method::POST, &format!("/{uuid}/signup"), &body)
                .await
                .status,
            201
        );
    }
    for _ in 0..5 {
        assert_eq!(login(&herve, &uuid, "ada", "guess").await.status, 401);
    }
    let throttled = login(&herve, &uuid, "ada", "correct-horse").await;
    assert_eq!(throttled.status, 429);
    assert!(throttled.header("retry-after").is_some());
    // Another user is not affected.
    assert_eq!(
        login(&herve, &uuid, "bob", "correct-horse").await.status,
        200
    );
    // Guesses sent all at once are counted too.
    let mut guesses = Vec::new();
    for i in 0..20 {
        let (client, uuid) = (herve.client.clone(), uuid.clone());
        guesses.push(tokio::spawn(async move {
            login(&client, &uuid, "bob", &format!("guess-{i}"))
                .await
                .status
                .as_u16()
        }));
    }
    let mut wrong = 0;
    for guess in guesses {
        match guess.await.expect("guess") {
            401 => wrong += 1,
            429 => {}
            other => panic!("status {other}"),
        }
    }
    assert!(wrong <= 5, "{wrong} guesses were checked within a minute");
    // Logging out needs a token.
    let out = herve
        .send(
            Method::POST,
            &format!("/{uuid}/logout"),
            Auth::None,
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(out.status, 401);
    herve.stop().await;
}

#[tokio::test]
async fn tokens_expire() {
    let herve = TestHerve::start().await;
    let uuid = auth_service(&herve, "2").await;
    form(
        &herve,
        Method::POST,
        &format!("/{uuid}/signup"),
        "username=ada&password=correct-horse",
    )
    .await;
    let token = login(&herve, &uuid, "ada", "correct-horse").await.json()["data"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(me(&herve, &uuid, &token).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert_eq!(me(&herve, &uuid, &token).await.status, 401);
    herve.stop().await;
}

#[tokio::test]
async fn data_survives_a_restart_and_goes_with_unregister() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = TestHerve::start_on(dir.path()).await;
    let models = models_service(&first).await;
    let accounts = auth_service(&first, "3600").await;
    form(
        &first,
        Method::POST,
        &format!("/{models}/user"),
        "username=kept&password=pw",
    )
    .await;
    form(
        &first,
        Method::POST,
        &format!("/{accounts}/signup"),
        "username=ada&password=correct-horse",
    )
    .await;
    let token = login(&first, &accounts, "ada", "correct-horse")
        .await
        .json()["data"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    first.stop().await;

    let second = TestHerve::start_on(dir.path()).await;
    let kept = second.get(&format!("/{models}/user/0")).await;
    assert_eq!(kept.json()["data"]["username"], "kept");
    assert_eq!(
        me(&second, &accounts, &token).await.json()["data"]["username"],
        "ada"
    );
    // Ids go on where they were.
    let next = form(
        &second,
        Method::POST,
        &format!("/{models}/user"),
        "username=new&password=pw",
    )
    .await;
    assert_eq!(next.json()["data"]["id"], 1);

    for uuid in [&models, &accounts] {
        second
            .stop_service(uuid)
            .await
            .expect(200, "The service has successfully stopped.");
        second
            .unregister(uuid)
            .await
            .expect(200, "The service has been successfully unregistered.");
    }
    second.stop().await;
    let conn = rusqlite::Connection::open(dir.path().join("herve.db")).expect("open");
    for table in [
        "model_instances",
        "model_sequences",
        "auth_users",
        "auth_tokens",
    ] {
        let rows: i64 = conn
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .expect("count");
        assert_eq!(rows, 0, "{table} kept data of unregistered services");
    }
}
