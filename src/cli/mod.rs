//! `herve <command>`: a client of a running Herve's admin API.
//!
//! Exit codes: 0 success, 1 the server refused (its message on stderr), 2 usage, 3 the
//! server cannot be reached (with the URL tried).

mod client;
mod show;

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::{json, Value};

use client::{Client, Failure};
use herve::manifest::{self, FileProblem, Manifest};

/// The commands, for the dispatch in `main`: anything else runs the server.
pub const COMMANDS: [&str; 17] = [
    "ls",
    "show",
    "register",
    "start",
    "stop",
    "restart",
    "reload",
    "rm",
    "edit",
    "logs",
    "status",
    "hash-secret",
    "apply",
    "diff",
    "export",
    "completions",
    // `herve --help` is the server's, with its settings; `herve help` is this one.
    "help",
];

/// Whether `args` (the program's name first) name a client command, after the
/// client's own options if any; anything else runs the server.
pub fn is_client(args: &[std::ffi::OsString]) -> bool {
    let mut rest = args.iter().skip(1).filter_map(|arg| arg.to_str());
    while let Some(arg) = rest.next() {
        match arg {
            "--json" => {}
            "--url" => {
                rest.next();
            }
            _ if arg.starts_with("--url=") => {}
            command => return COMMANDS.contains(&command),
        }
    }
    false
}

#[derive(Parser)]
#[command(
    name = "herve",
    version,
    about = "Drive a running Herve (`herve` or `herve serve` runs the server).",
    after_help = "The server is found at --url, else HERVE_URL, else http://127.0.0.1:$PORT \
                  (HERVE_ADMIN_ADDR when set). Credentials: HERVE_ADMIN_ID/HERVE_ADMIN_SECRET, \
                  else AUTH_ADMIN_ID/AUTH_ADMIN_SECRET, else the secret Herve generated in \
                  its data directory (HERVE_DATA_DIR). Exit codes: 0 done, 1 refused by the \
                  server, 2 usage, 3 server unreachable."
)]
struct Cli {
    /// The admin API's address.
    #[arg(long, env = "HERVE_URL", global = true, value_name = "URL")]
    url: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the services.
    Ls,
    /// Show one service.
    Show { service: String },
    /// Register a service: herve register TYPE NAME [key=value ...].
    Register {
        #[arg(value_name = "TYPE")]
        type_name: String,
        name: String,
        /// Fields, each `key=value` (a key may repeat).
        #[arg(value_name = "KEY=VALUE")]
        fields: Vec<String>,
    },
    /// Start services.
    Start {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Stop services.
    Stop {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Stop then start services.
    Restart {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Replace running services without dropping a request.
    Reload {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Unregister services (stopped ones; --force stops them first).
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
        /// Stop a running service first.
        #[arg(long, short)]
        force: bool,
    },
    /// Change fields of a service: herve edit NAME key=value ...
    Edit {
        service: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        fields: Vec<String>,
    },
    /// Print a service's output.
    Logs {
        service: String,
        /// Keep printing new lines as they are written.
        #[arg(long, short)]
        follow: bool,
        /// How many of the last lines to print first.
        #[arg(long, short = 'n', value_name = "N")]
        lines: Option<u32>,
    },
    /// The server's version, uptime and services.
    Status,
    /// Read a secret on stdin, print its argon2 hash (for AUTH_ADMIN_SECRET).
    HashSecret,
    /// Make the server match a services file.
    Apply {
        #[arg(long, short, value_name = "FILE")]
        file: PathBuf,
        /// Also delete the services the file does not declare.
        #[arg(long)]
        prune: bool,
        /// Only print what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print what applying a services file would change.
    Diff {
        #[arg(long, short, value_name = "FILE")]
        file: PathBuf,
        /// Count deletions of the services the file does not declare.
        #[arg(long)]
        prune: bool,
    },
    /// Print the server's services as a file that applies back to itself.
    Export,
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

/// Runs a client command; `args` starts with the program's name.
pub fn run(args: Vec<std::ffi::OsString>) -> ExitCode {
    // Settings in ./.env count, as for the server; the environment wins.
    let _ = dotenvy::from_path(".env");
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { 2 } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{failure}");
            ExitCode::from(failure.code())
        }
    }
}

async fn execute(cli: Cli) -> Result<(), Failure> {
    let json_out = cli.json;
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "herve", &mut std::io::stdout());
            return Ok(());
        }
        Command::HashSecret => return hash_secret(),
        _ => {}
    }
    let client = Client::new(cli.url.as_deref())?;
    let out = Output { json: json_out };
    match cli.command {
        Command::Ls => {
            let answer = client.get("/services").await?;
            out.print(&answer, || show::table(&answer["data"], color()))
        }
        Command::Show { service } => {
            let uuid = client.resolve(&service).await?;
            let answer = client.get(&format!("/services/{uuid}")).await?;
            out.print(&answer, || show::service(&answer["data"]))
        }
        Command::Register {
            type_name,
            name,
            fields,
        } => {
            let mut pairs = vec![("name".to_owned(), name), ("type".to_owned(), type_name)];
            pairs.extend(key_values(&fields)?);
            let answer = client.post_form("/services/register", &pairs).await?;
            out.print(&answer, || {
                format!(
                    "registered {} ({})\n",
                    answer["data"]["name"].as_str().unwrap_or_default(),
                    answer["data"]["uuid"].as_str().unwrap_or_default()
                )
            })
        }
        Command::Start { services } => lifecycle(&client, &out, &services, "start").await,
        Command::Stop { services } => lifecycle(&client, &out, &services, "stop").await,
        Command::Restart { services } => lifecycle(&client, &out, &services, "restart").await,
        Command::Reload { services } => lifecycle(&client, &out, &services, "reload").await,
        Command::Rm { services, force } => {
            if force {
                lifecycle(&client, &Output { json: false }, &services, "stop").await?;
            }
            lifecycle(&client, &out, &services, "unregister").await
        }
        Command::Edit { service, fields } => {
            let pairs = key_values(&fields)?;
            let uuid = client.resolve(&service).await?;
            let answer = client
                .patch_form(&format!("/services/{uuid}"), &pairs)
                .await?;
            out.print(&answer, || {
                let restarted = if answer["data"]["restarted"] == json!(true) {
                    " (restarted)"
                } else {
                    ""
                };
                format!("edited {service}{restarted}\n")
            })
        }
        Command::Logs {
            service,
            follow,
            lines,
        } => {
            let uuid = client.resolve(&service).await?;
            let tail = lines.map(|n| format!("&tail={n}")).unwrap_or_default();
            if follow {
                let path = format!("/services/{uuid}/logs?follow=true{tail}");
                client.stream(&path, &mut std::io::stdout()).await
            } else {
                let answer = client
                    .get(&format!("/services/{uuid}/logs?follow=false{tail}"))
                    .await?;
                out.print(&answer, || {
                    let mut text = String::new();
                    for line in answer["data"].as_array().into_iter().flatten() {
                        text.push_str(line.as_str().unwrap_or_default());
                        text.push('\n');
                    }
                    text
                })
            }
        }
        Command::Status => {
            let answer = client.get("/services/status").await?;
            out.print(&answer, || show::status(&answer["data"], client.url()))
        }
        Command::Apply {
            file,
            prune,
            dry_run,
        } => apply(&client, &out, &file, prune, dry_run).await,
        Command::Diff { file, prune } => apply(&client, &out, &file, prune, true).await,
        Command::Export => {
            let answer = client.get("/services/apply").await?;
            out.print(&answer, || {
                let services = answer["data"]["services"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                manifest::render(&services)
            })
        }
        Command::Completions { .. } | Command::HashSecret => Ok(()),
    }
}

/// Where results go: the API's JSON, or text for people.
struct Output {
    json: bool,
}

impl Output {
    fn print(&self, answer: &Value, text: impl FnOnce() -> String) -> Result<(), Failure> {
        let rendered = if self.json {
            let mut pretty = serde_json::to_string_pretty(answer).unwrap_or_default();
            pretty.push('\n');
            pretty
        } else {
            text()
        };
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`herve ls | head`) is not an error of ours.
        let _ = stdout.write_all(rendered.as_bytes());
        let _ = stdout.flush();
        Ok(())
    }
}

/// Runs `action` on each service, in order; stops at the first refusal.
async fn lifecycle(
    client: &Client,
    out: &Output,
    services: &[String],
    action: &str,
) -> Result<(), Failure> {
    for service in services {
        let uuid = client.resolve(service).await?;
        let answer = client.post(&format!("/services/{uuid}/{action}")).await?;
        out.print(&answer, || {
            let done = match action {
                "start" => "started",
                "stop" => "stopped",
                "restart" => "restarted",
                "reload" => "reloaded",
                _ => "removed",
            };
            format!("{done} {service}\n")
        })?;
    }
    Ok(())
}

/// `key=value` arguments as pairs.
fn key_values(given: &[String]) -> Result<Vec<(String, String)>, Failure> {
    given
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .filter(|(key, _)| !key.is_empty())
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .ok_or_else(|| Failure::Usage(format!("'{pair}' is not of the form key=value")))
        })
        .collect()
}

async fn apply(
    client: &Client,
    out: &Output,
    file: &Path,
    prune: bool,
    dry_run: bool,
) -> Result<(), Failure> {
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file)
        .map_err(|error| Failure::Usage(format!("cannot read {shown}: {error}")))?;
    let manifest = Manifest::parse(&text).map_err(|problems| file_problems(&shown, &problems))?;
    let desired = manifest.desired_state(prune, dry_run);
    match client.post_json("/services/apply", &desired).await {
        Ok(answer) => out.print(&answer, || show::changes(&answer["data"], dry_run)),
        Err(Failure::Refused { status, body, .. })
            if status == 400 && body["data"]["problems"].is_array() =>
        {
            if out.json {
                out.print(&body, String::new)?;
            }
            let problems: Vec<FileProblem> = body["data"]["problems"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|problem| FileProblem {
                    line: problem["index"]
                        .as_u64()
                        .and_then(|index| usize::try_from(index).ok())
                        .map_or(0, |index| {
                            manifest.line_of(index, problem["field"].as_str())
                        }),
                    message: problem["message"].as_str().unwrap_or_default().to_owned(),
                })
                .collect();
            Err(file_problems(&shown, &problems))
        }
        Err(Failure::Refused {
            status,
            body,
            message,
        }) if body["data"]["changes"].is_array() => {
            // Some changes failed: show them all, then fail.
            out.print(&body, || show::changes(&body["data"], dry_run))?;
            Err(Failure::Refused {
                status,
                body,
                message,
            })
        }
        Err(other) => Err(other),
    }
}

/// Every problem of a file, one per line, as `file:line: message`.
fn file_problems(file: &str, problems: &[FileProblem]) -> Failure {
    let lines: Vec<String> = problems
        .iter()
        .map(|problem| {
            if problem.line == 0 {
                format!("{file}: {}", problem.message)
            } else {
                format!("{file}:{}: {}", problem.line, problem.message)
            }
        })
        .collect();
    Failure::Invalid(lines.join("\n"))
}

/// Whether to colour what goes to stdout.
fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn hash_secret() -> Result<(), Failure> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut secret = String::new();
    if std::io::stdin().is_terminal() {
        eprint!("secret: ");
    }
    std::io::stdin()
        .read_to_string(&mut secret)
        .map_err(|error| Failure::Usage(format!("cannot read the secret on stdin: {error}")))?;
    let secret = secret.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(Failure::Usage("the secret on stdin is empty".to_owned()));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)
        .map_err(|error| Failure::Usage(format!("no randomness for a salt: {error}")))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|error| Failure::Usage(format!("cannot make a salt: {error}")))?;
    let hash = argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|error| Failure::Usage(format!("cannot hash the secret: {error}")))?;
    println!("{hash}");
    Ok(())
}
