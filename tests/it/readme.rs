//! The README's tour, run as written against a real Herve: every ```` ```sh tour ````
//! block in its own shell, each command's output compared with the `#>` lines under
//! it (`…` matches anything). So the README cannot drift from what Herve does.

use std::process::Command;

use crate::support::*;

/// A command of a block (one or more lines), and the output it must give.
#[derive(Debug)]
struct Step {
    command: String,
    expected: Option<String>,
}

/// The tour blocks of the README, in order.
fn tour_blocks(readme: &str) -> Vec<Vec<Step>> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```sh tour" {
            continue;
        }
        let mut steps: Vec<Step> = Vec::new();
        let mut pending = String::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            // Inside a here-document every line is the document's, as written.
            if open_heredoc(&pending) {
                pending.push('\n');
                pending.push_str(line);
                continue;
            }
            if let Some(output) = line.strip_prefix("#>") {
                let output = output.strip_prefix(' ').unwrap_or(output);
                if !pending.is_empty() {
                    steps.push(Step {
                        command: std::mem::take(&mut pending),
                        expected: None,
                    });
                }
                let step = steps.last_mut().expect("output under a command");
                match &mut step.expected {
                    Some(expected) => {
                        expected.push('\n');
                        expected.push_str(output);
                    }
                    None => step.expected = Some(output.to_owned()),
                }
                continue;
            }
            if line.trim_start().starts_with('#') || line.trim().is_empty() {
                continue;
            }
            // A command goes on over lines ending in `\` and over the lines of a
            // loop, until its output or the next command.
            let continues = pending.trim_end().ends_with('\\')
                || (!pending.is_empty() && open_constructs(&pending) > 0);
            if !pending.is_empty() && !continues {
                steps.push(Step {
                    command: std::mem::take(&mut pending),
                    expected: None,
                });
            }
            if !pending.is_empty() {
                pending.push('\n');
            }
            pending.push_str(line);
        }
        if !pending.is_empty() {
            steps.push(Step {
                command: pending,
                expected: None,
            });
        }
        blocks.push(steps);
    }
    blocks
}

/// Whether `text` opened a here-document (`<<'EOF'` or `<<EOF`) whose end line has not
/// come yet.
fn open_heredoc(text: &str) -> bool {
    let Some(at) = text.rfind("<<") else {
        return false;
    };
    let word: String = text[at + 2..]
        .trim_start_matches(['\'', '"', '-'])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    !word.is_empty() && !text[at..].lines().skip(1).any(|line| line.trim() == word)
}

/// `for`/`while`/`if` opened and not yet closed in `text`.
fn open_constructs(text: &str) -> i32 {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ';')
        .collect();
    let opened = words
        .iter()
        .filter(|w| matches!(**w, "do" | "then"))
        .count();
    let closed = words
        .iter()
        .filter(|w| matches!(**w, "done" | "fi"))
        .count();
    i32::try_from(opened).unwrap_or(0) - i32::try_from(closed).unwrap_or(0)
}

/// Whether `actual` is `expected`, where `…` in `expected` matches any text.
fn matches(expected: &str, actual: &str) -> bool {
    let parts: Vec<&str> = expected.split('…').collect();
    let Some((first, rest)) = parts.split_first() else {
        return actual.is_empty();
    };
    let Some(mut left) = actual.strip_prefix(first) else {
        return false;
    };
    for (index, part) in rest.iter().enumerate() {
        if index == rest.len() - 1 {
            return left.ends_with(part);
        }
        match left.find(part) {
            Some(at) => left = &left[at + part.len()..],
            None => return false,
        }
    }
    left.is_empty()
}

#[test]
fn the_matcher_takes_ellipses_for_anything() {
    assert!(matches("a…c", "abbbc"));
    assert!(matches(
        "{\"uuid\":\"…\",\"x\":1}",
        "{\"uuid\":\"12-34\",\"x\":1}"
    ));
    assert!(!matches("a…c", "abbbd"));
    assert!(matches("exact", "exact"));
    assert!(!matches("exact", "exactly"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_runs_as_written() {
    for tool in ["bash", "curl", "jq", "openssl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|out| out.status.success());
        assert!(found, "the README tour needs {tool} (.ci/run installs it)");
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let blocks = tour_blocks(&readme);
    assert!(blocks.len() >= 7, "the tour blocks were not found");
    let dir = tempfile::tempdir().expect("tempdir");
    let herve = BinHerve::spawn(
        dir.path(),
        &[("HERVE_ACCESS_LOG", "false"), ("HERVE_TLS_PORT", "0")],
    );
    let address = format!("http://{}", herve.addr);
    let https = format!("https://{}", herve.tls_addr.expect("an HTTPS listener"));
    let admin = format!("{ADMIN_ID}:{ADMIN_SECRET}");
    for (number, steps) in blocks.into_iter().enumerate() {
        let (address, https, admin) = (address.clone(), https.clone(), admin.clone());
        tokio::task::spawn_blocking(move || {
            run_block(number + 1, &steps, (&address, &https), &admin)
        })
        .await
        .expect("block");
    }
}

/// PATH, with the directory of the `herve` binary first.
fn path_with_herve() -> std::ffi::OsString {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_herve"));
    let mut dirs = vec![binary.parent().expect("a directory").to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).expect("a PATH")
}

/// Runs one block in one shell, a marker before each command, and compares.
fn run_block(number: usize, steps: &[Step], (address, https): (&str, &str), admin: &str) {
    let mut script = String::from("set -e -o pipefail\n");
    for (index, step) in steps.iter().enumerate() {
        script.push_str(&format!(
            "printf '\\n@@step {index}@@\\n'\n{}\n",
            step.command
        ));
    }
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("H", address)
        .env("HS", https)
        .env("ADMIN", admin)
        // The Day-to-day block runs `herve`, the binary built with the tests.
        .env("PATH", path_with_herve())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tour block {number} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for (index, step) in steps.iter().enumerate() {
        let Some(expected) = &step.expected else {
            continue;
        };
        let marker = format!("@@step {index}@@\n");
        let start = stdout
            .find(&marker)
            .map(|at| at + marker.len())
            .expect("the step ran");
        let end = stdout[start..]
            .find("\n@@step ")
            .map_or(stdout.len(), |at| start + at);
        let actual = stdout[start..end].trim_end();
        assert!(
            matches(expected, actual),
            "tour block {number}, `{}`:\nexpected: {expected}\nactual:   {actual}",
            step.command
        );
    }
}
