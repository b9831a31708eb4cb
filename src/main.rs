//! The `herve` binary: the server (no command, or `herve serve`) until a signal stops
//! it, or a client of a running one (`herve ls`, `herve apply`, … see `herve help`).

mod cli;

use std::process::ExitCode;

use anyhow::Context;
use herve::{host, Config, CredentialSource, HerveBuilder, LogFormat, LogLevel};

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if cli::is_client(&args) {
        return cli::run(args);
    }
    if args.get(1).and_then(|arg| arg.to_str()) == Some("serve") {
        args.remove(1);
    }
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    // First of all, before any secret is read: no process of the same user (a program
    // Herve runs) may read this one's memory or environment through /proc.
    if let Err(error) = host::make_non_dumpable() {
        eprintln!("warning: could not make Herve non-dumpable: {error}");
    }
    host::tune_allocator();
    let config = Config::load_from(args).unwrap_or_else(|error| error.exit());
    // Held until the end of main: dropping it flushes the lines still queued.
    let _log_writer = init_logs(&config);
    host::raise_open_file_limit();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?
        .block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    if let Err(error) = host::adopt_orphans() {
        tracing::warn!(%error, "Herve cannot adopt the orphans of its programs");
    }
    host::spawn_memory_upkeep();
    let herve = HerveBuilder::new(config.clone())
        .bind()
        .await
        .context("Herve could not start")?;
    let addr = herve.local_addr();
    let admin_port = herve.admin_addr().unwrap_or(addr).port();
    let (id, source) = herve.admin_credentials();
    match source {
        CredentialSource::Configured => {
            tracing::info!("admin API: HTTP Basic auth as '{id}' with AUTH_ADMIN_SECRET")
        }
        CredentialSource::Generated { secret, file } => {
            // Printed once, on stdout whatever the log settings: the user needs it.
            println!(
                "Generated admin credentials (kept in {}):\n  id:     {id}\n  secret: {secret}\n\
                 Try: curl -u '{id}:{secret}' http://127.0.0.1:{}/services",
                file.display(),
                admin_port
            );
        }
        CredentialSource::Stored { file } => tracing::info!(
            "admin API: HTTP Basic auth as '{id}' with the secret in {}",
            file.display()
        ),
    }
    let https = herve
        .tls_addr()
        .map(|tls| format!(" and https://{tls}"))
        .unwrap_or_default();
    tracing::info!(
        "Herve listens on http://{addr}{https} (data in {})",
        config.data_dir.display()
    );
    if let Some(admin) = herve.admin_addr() {
        tracing::info!("the admin API listens on http://{admin}");
    }
    herve.serve(host::shutdown_signal()).await;
    tracing::info!("Herve stopped");
    Ok(())
}

/// Log lines are formatted where they happen but written by a thread of their own, so
/// that a request never waits for stdout. Lossless: under a flood the queue pushes back
/// rather than drop access lines.
fn init_logs(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::filter::LevelFilter;
    let level = match config.log_level {
        LogLevel::Off => LevelFilter::OFF,
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}
