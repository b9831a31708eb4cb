//! What the commands print for people.

use serde_json::Value;

/// `herve ls`: one aligned row per service.
pub fn table(services: &Value, color: bool) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "TYPE".to_owned(),
        "STATUS".to_owned(),
        "ROUTES".to_owned(),
        "UPTIME".to_owned(),
        "RESTARTS".to_owned(),
        "COPIES".to_owned(),
    ]];
    for service in services.as_array().into_iter().flatten() {
        let text = |key: &str| service[key].as_str().unwrap_or_default().to_owned();
        let runtime = &service["runtime"];
        let copies = runtime["replicas"].as_array();
        let restarts: u64 = match copies {
            Some(copies) => copies.iter().filter_map(|c| c["restarts"].as_u64()).sum(),
            None => runtime["restarts"].as_u64().unwrap_or(0),
        };
        let running = copies.map_or(0, |copies| {
            copies.iter().filter(|c| c["state"] == "running").count()
        });
        rows.push([
            text("name"),
            text("type"),
            text("status"),
            routes(service),
            service["started_at"]
                .as_u64()
                .map(|at| duration(now().saturating_sub(at)))
                .unwrap_or_else(|| "-".to_owned()),
            restarts.to_string(),
            copies.map_or_else(|| "-".to_owned(), |c| format!("{running}/{}", c.len())),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (index, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            let padded = format!("{cell:<width$}", width = widths[column]);
            if color && index > 0 && column == 2 {
                line.push_str(&paint(cell, &padded));
            } else {
                line.push_str(&padded);
            }
            line.push_str("  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `herve show`: the service's keys, its configuration, and each copy.
pub fn service(service: &Value) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key:<12} {value}\n"));
    for key in ["name", "uuid", "type", "status", "reason", "description"] {
        if let Some(text) = service[key].as_str() {
            line(key, text.to_owned());
        }
    }
    line("routes", routes(service));
    if let Some(at) = service["started_at"].as_u64() {
        line("uptime", duration(now().saturating_sub(at)));
    }
    if let Some(config) = service["config"].as_object() {
        for (key, value) in config {
            let shown = match value {
                Value::String(text) => text.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            line(&format!("config.{key}"), shown);
        }
    }
    if let Some(copies) = service["runtime"]["replicas"].as_array() {
        out.push_str("\nCOPY  STATE       PID      PORT   RESTARTS  LAST EXIT\n");
        for copy in copies {
            out.push_str(&format!(
                "{:<5} {:<11} {:<8} {:<6} {:<9} {}\n",
                copy["copy"].as_u64().unwrap_or(0),
                copy["state"].as_str().unwrap_or("-"),
                copy["pid"]
                    .as_u64()
                    .map_or("-".to_owned(), |p| p.to_string()),
                copy["port"]
                    .as_u64()
                    .map_or("-".to_owned(), |p| p.to_string()),
                copy["restarts"].as_u64().unwrap_or(0),
                copy["last_exit"].as_str().unwrap_or("-"),
            ));
        }
    }
    out
}

/// `herve status`.
pub fn status(status: &Value, url: &str) -> String {
    let mut out = format!(
        "Herve {} at {url}, up {}\n{} service(s)",
        status["version"].as_str().unwrap_or("?"),
        duration(status["uptime_s"].as_u64().unwrap_or(0)),
        status["services"].as_u64().unwrap_or(0),
    );
    if let Some(by_status) = status["by_status"].as_object() {
        let parts: Vec<String> = by_status
            .iter()
            .map(|(status, count)| format!("{count} {status}"))
            .collect();
        if !parts.is_empty() {
            out.push_str(&format!(": {}", parts.join(", ")));
        }
    }
    out.push('\n');
    out
}

/// `herve diff` and `herve apply`: one line per change.
pub fn changes(data: &Value, dry_run: bool) -> String {
    let changes = data["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        return "No changes: the server matches the file.\n".to_owned();
    }
    let mut out = String::new();
    for change in &changes {
        let name = change["name"].as_str().unwrap_or_default();
        let kind = change["type"].as_str().unwrap_or_default();
        let mut line = match change["action"].as_str().unwrap_or_default() {
            "create" => format!("+ create {name} ({kind})"),
            "update" => {
                let keys: Vec<&str> = change["keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                format!("~ update {name}: {}", keys.join(", "))
            }
            "start" => format!("> start {name}"),
            "stop" => format!(". stop {name}"),
            "delete" => format!("- delete {name}"),
            other => format!("? {other} {name}"),
        };
        if let Some(error) = change["error"].as_str() {
            line.push_str(&format!("  FAILED: {error}"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    let verb = if dry_run { "to make" } else { "made" };
    let failed = changes
        .iter()
        .filter(|c| c["done"] == Value::Bool(false))
        .count();
    if failed > 0 {
        out.push_str(&format!("{} change(s), {failed} failed.\n", changes.len()));
    } else {
        out.push_str(&format!("{} change(s) {verb}.\n", changes.len()));
    }
    out
}

/// How a service is reached: its hosts and path, else `/<name>`.
fn routes(service: &Value) -> String {
    let hosts: Vec<&str> = service["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let path = service["path"].as_str();
    match (hosts.is_empty(), path) {
        (true, None) => format!("/{}", service["name"].as_str().unwrap_or_default()),
        (true, Some(path)) => path.to_owned(),
        (false, Some("/") | None) => hosts.join(","),
        (false, Some(path)) => hosts
            .iter()
            .map(|host| format!("{host}{path}"))
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn paint(status: &str, padded: &str) -> String {
    let code = match status {
        "running" => "32",
        "starting" => "33",
        "failed" => "31",
        _ => return padded.to_owned(),
    };
    format!("\x1b[{code}m{padded}\x1b[0m")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}
