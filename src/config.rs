//! Configuration: command-line flags, the process environment and an optional `.env`.
//!
//! Every setting is an environment variable (the contract's names where it has one)
//! and a flag of the same meaning; `herve --help` lists them. The environment wins over
//! `.env`, and a flag wins over both. A value that does not parse stops start-up with a
//! message naming the variable.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// Where the access log goes (`HERVE_ACCESS_LOG`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    /// No access log (`false`).
    Off,
    /// Standard output, beside the other logs (`true`, the default).
    Stdout,
    /// Appended to this file, reopened on SIGUSR1 (a value with a `/`).
    File(PathBuf),
}

impl AccessLog {
    /// `true`, `false` (also `on`/`off`, `yes`/`no`, `1`/`0`, `stdout`), or a file
    /// path, which must have a `/` (`./access.log`), so that a mistyped word is not
    /// taken for a file name.
    pub fn parse(text: &str) -> Result<AccessLog, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" | "stdout" => Ok(AccessLog::Stdout),
            "false" | "off" | "no" | "0" => Ok(AccessLog::Off),
            _ if text.contains('/') => Ok(AccessLog::File(PathBuf::from(text.trim()))),
            _ => Err(format!(
                "'{text}' is neither true, false nor a file path (a path has a '/', like ./access.log)"
            )),
        }
    }
}

/// How verbose the logs are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// And what happens (services starting, stopping), and the access log.
    Info,
    /// And details for debugging.
    Debug,
    /// Everything.
    Trace,
}

/// How Herve proves to an ACME server that it answers for a host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcmeChallenge {
    /// TLS-ALPN-01 (RFC 8737), on the HTTPS port: works when only port 443 is open.
    #[value(name = "tls-alpn-01")]
    TlsAlpn01,
    /// HTTP-01, on the plain port (which must then be port 80 for public CAs).
    #[value(name = "http-01")]
    Http01,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Every setting of a Herve.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "herve",
    version,
    about = "One binary to register, run, supervise and route to your services.",
    after_help = "Settings are read from flags, then the environment, then ./.env.\n\
                  This runs the server (also `herve serve`); `herve help` lists the commands \
                  that drive a running one (ls, logs, apply, …)."
)]
pub struct Config {
    /// TCP port of the HTTP server (admin API and service routes).
    #[arg(long, env = "PORT", value_name = "PORT", default_value_t = 5000)]
    pub port: u16,

    /// Address to listen on.
    #[arg(
        long,
        env = "HERVE_HOST",
        value_name = "ADDR",
        default_value = "0.0.0.0"
    )]
    pub host: IpAddr,

    /// Address of the admin API (e.g. `127.0.0.1:5001`). When set, the admin API
    /// answers only there, and the main port serves `/health` and services only.
    #[arg(long, env = "HERVE_ADMIN_ADDR", value_name = "ADDR:PORT")]
    pub admin_addr: Option<std::net::SocketAddr>,

    /// TCP port of the HTTPS server, which serves everything the plain port serves
    /// (0 picks a free port). Unset: no HTTPS.
    #[arg(long, env = "HERVE_TLS_PORT", value_name = "PORT")]
    pub tls_port: Option<u16>,

    /// Answer plain-HTTP requests with a 308 to the same URL on HTTPS (but `/health`
    /// and ACME's HTTP-01 challenges).
    #[arg(long, env = "HERVE_TLS_REDIRECT", value_name = "BOOL", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub tls_redirect: bool,

    /// PEM certificate chain served to names without a certificate of their own
    /// (read again when the file changes). Needs HERVE_TLS_KEY.
    #[arg(
        long,
        env = "HERVE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of HERVE_TLS_CERT.
    #[arg(
        long,
        env = "HERVE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Seconds a client has to complete a TLS handshake.
    #[arg(long, env = "HERVE_TLS_HANDSHAKE_TIMEOUT_S", value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub tls_handshake_timeout_s: u64,

    /// Contact address of the ACME account. When set, Herve obtains and renews a
    /// certificate for every exact host name of its running services.
    #[arg(long, env = "HERVE_ACME_EMAIL", value_name = "EMAIL")]
    pub acme_email: Option<String>,

    /// The ACME server's directory URL.
    #[arg(long, env = "HERVE_ACME_DIRECTORY", value_name = "URL", default_value = LETS_ENCRYPT)]
    pub acme_directory: String,

    /// PEM root certificate to trust for the ACME server (a test CA such as pebble's).
    #[arg(long, env = "HERVE_ACME_CA_ROOT", value_name = "FILE")]
    pub acme_ca_root: Option<PathBuf>,

    /// How ACME validation reaches Herve.
    #[arg(long, env = "HERVE_ACME_CHALLENGE", value_name = "TYPE", value_enum,
          default_value_t = AcmeChallenge::TlsAlpn01)]
    pub acme_challenge: AcmeChallenge,

    /// Admin user id for HTTP Basic auth. Without it (or without a secret), Herve uses
    /// the id `admin` with a generated secret kept in the data directory.
    #[arg(long, env = "AUTH_ADMIN_ID", value_name = "ID")]
    pub auth_admin_id: Option<String>,

    /// Admin secret: in clear, or a bcrypt ($2a$/$2b$/$2y$) or argon2 PHC hash.
    #[arg(
        long,
        env = "AUTH_ADMIN_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub auth_admin_secret: Option<String>,

    /// Failed admin authentications from one address within a minute before that
    /// address is refused (429) for the rest of the minute.
    #[arg(long, env = "HERVE_AUTH_MAX_FAILURES", value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_max_failures: u32,

    /// Directory for the database, the generated admin secret and services' files.
    #[arg(
        long,
        env = "HERVE_DATA_DIR",
        value_name = "DIR",
        default_value = "./herve-data"
    )]
    pub data_dir: PathBuf,

    /// PostgreSQL database shared by several Herve nodes
    /// (`postgres://user:password@host:5432/herve`). Unset: the embedded SQLite
    /// database in the data directory, for a Herve that runs alone.
    #[arg(
        long,
        env = "HERVE_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// PEM file of the CA that signed the database server's certificate: the server is
    /// then verified (with `sslmode=require` in the URL, TLS is required too). Without
    /// it, TLS (when the server offers it) is not verified, as with libpq.
    #[arg(long, env = "HERVE_DATABASE_CA", value_name = "FILE")]
    pub database_ca: Option<PathBuf>,

    /// This node's name among the nodes sharing HERVE_DATABASE_URL (default: the
    /// machine's host name). Unique per node.
    #[arg(long, env = "HERVE_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// Where the other nodes reach this node's port (`http://10.0.0.2:5000`), to
    /// forward the traffic of the programs it runs. Default: `http://<host
    /// name>:<PORT>`, or `http://<HERVE_HOST>:<PORT>` when HERVE_HOST is not a
    /// wildcard address.
    #[arg(long, env = "HERVE_NODE_ADDR", value_name = "URL")]
    pub node_addr: Option<String>,

    /// Seconds after which the programs of a node that stopped answering are started
    /// on another node (its leases run out).
    #[arg(long, env = "HERVE_FAILOVER_S", value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub failover_s: u64,

    /// Most services that may be registered at once.
    #[arg(long, env = "HERVE_MAX_SERVICES", value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_services: u32,

    /// Largest request body accepted, in bytes (413 beyond).
    #[arg(long, env = "HERVE_MAX_BODY_BYTES", value_name = "BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: u64,

    /// Largest request head (request line and headers) accepted, in bytes (431 beyond).
    #[arg(long, env = "HERVE_MAX_HEADER_BYTES", value_name = "BYTES", default_value_t = 16 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024))]
    pub max_header_bytes: u32,

    /// Seconds a client has to send a complete request head, counted from when the
    /// connection opens or its previous response ends; so also the idle keep-alive limit.
    #[arg(long, env = "HERVE_HEADER_TIMEOUT_S", value_name = "SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_s: u64,

    /// Seconds a request body may go without sending any data before the request fails.
    #[arg(long, env = "HERVE_BODY_TIMEOUT_S", value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_timeout_s: u64,

    /// Seconds a client has to send a whole request body, counted from when its head
    /// has arrived (the head itself has HERVE_HEADER_TIMEOUT_S).
    #[arg(long, env = "HERVE_REQUEST_TIMEOUT_S", value_name = "SECONDS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub request_timeout_s: u64,

    /// Fewest bytes a second a request body must average once HERVE_MIN_BODY_RATE_GRACE_S
    /// have passed (0: no minimum).
    #[arg(
        long,
        env = "HERVE_MIN_BODY_RATE",
        value_name = "BYTES",
        default_value_t = 1024
    )]
    pub min_body_rate: u64,

    /// Seconds a request body may take before HERVE_MIN_BODY_RATE applies.
    #[arg(long, env = "HERVE_MIN_BODY_RATE_GRACE_S", value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub min_body_rate_grace_s: u64,

    /// Seconds a client may go without reading any of a response before it is
    /// disconnected.
    #[arg(long, env = "HERVE_SEND_TIMEOUT_S", value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub send_timeout_s: u64,

    /// Most client connections open at once for service traffic. A few more are kept
    /// in reserve for `/health` and the admin API.
    #[arg(long, env = "HERVE_MAX_CONNECTIONS", value_name = "N", default_value_t = 20_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Most connections open at once from one client address (an IPv6 client: its /64).
    #[arg(long, env = "HERVE_MAX_CONNECTIONS_PER_IP", value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_ip: u32,

    /// Threads serving connections (the data plane); 0 means one per CPU core.
    #[arg(long, env = "HERVE_WORKERS", value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub workers: u32,

    /// Seconds in-flight requests get to finish when Herve is asked to stop.
    #[arg(
        long,
        env = "HERVE_SHUTDOWN_TIMEOUT_S",
        value_name = "SECONDS",
        default_value_t = 30
    )]
    pub shutdown_timeout_s: u64,

    /// Addresses and networks of the proxies in front of Herve (comma-separated, e.g.
    /// `10.0.0.0/8,::1`): their X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host
    /// and Forwarded headers are kept and extended. From anyone else they are replaced.
    #[arg(long, env = "HERVE_TRUSTED_PROXIES", value_name = "LIST", default_value = "",
          value_parser = crate::TrustedProxies::parse)]
    pub trusted_proxies: crate::TrustedProxies,

    /// An address of its own for `GET /metrics`, without credentials, for Prometheus
    /// (`127.0.0.1:9100`); the admin API's `/metrics` needs them.
    #[arg(long, env = "HERVE_METRICS_ADDR", value_name = "ADDR:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// A `herve.toml` applied at start (without pruning): the services it declares are
    /// created, updated, started or stopped to match it.
    #[arg(long, env = "HERVE_SERVICES_FILE", value_name = "FILE")]
    pub services_file: Option<PathBuf>,

    /// Log verbosity.
    #[arg(long, env = "HERVE_LOG", value_name = "LEVEL", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Log format.
    #[arg(long, env = "HERVE_LOG_FORMAT", value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// One line per request: `true` (to stdout), `false`, or a file to append to
    /// (reopened on SIGUSR1). Lines follow `HERVE_LOG_FORMAT`.
    #[arg(long, env = "HERVE_ACCESS_LOG", value_name = "true|false|FILE", default_value = "true",
          value_parser = AccessLog::parse)]
    pub access_log: AccessLog,
}

impl Default for Config {
    /// The defaults, ignoring the environment.
    fn default() -> Self {
        Config {
            port: 5000,
            host: IpAddr::from([0, 0, 0, 0]),
            admin_addr: None,
            services_file: None,
            metrics_addr: None,
            tls_port: None,
            tls_redirect: false,
            tls_cert: None,
            tls_key: None,
            tls_handshake_timeout_s: 10,
            acme_email: None,
            database_url: None,
            database_ca: None,
            node_name: None,
            node_addr: None,
            failover_s: 10,
            acme_directory: LETS_ENCRYPT.to_owned(),
            acme_ca_root: None,
            acme_challenge: AcmeChallenge::TlsAlpn01,
            auth_admin_id: None,
            auth_admin_secret: None,
            auth_max_failures: 10,
            data_dir: PathBuf::from("./herve-data"),
            max_services: 10_000,
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            header_timeout_s: 15,
            body_timeout_s: 30,
            request_timeout_s: 120,
            min_body_rate: 1024,
            min_body_rate_grace_s: 10,
            send_timeout_s: 60,
            max_connections: 20_000,
            max_connections_per_ip: 1024,
            workers: 0,
            shutdown_timeout_s: 30,
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
            access_log: AccessLog::Stdout,
            trusted_proxies: crate::TrustedProxies::default(),
        }
    }
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `.env` exists but could not be read.
    #[error("could not read .env: {0}")]
    DotEnv(#[source] dotenvy::Error),
    /// A flag or a variable does not parse (or help was asked for).
    #[error(transparent)]
    Invalid(#[from] clap::Error),
}

impl Config {
    /// Reads `.env` from the working directory (if any) into the environment, without
    /// overriding what is set already, then parses flags and environment.
    pub fn load() -> Result<Config, ConfigError> {
        Config::load_from(std::env::args_os())
    }

    /// As [`Config::load`], with these command-line arguments (the first is the
    /// program's name).
    pub fn load_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        // `from_path`, not `dotenv()`: the latter also searches parent directories.
        match dotenvy::from_path(".env") {
            Ok(_) => {}
            Err(error) if error.not_found() => {}
            Err(error) => return Err(ConfigError::DotEnv(error)),
        }
        Ok(Config::try_parse_from(args)?)
    }

    /// How long a client has to send a request head.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_s)
    }

    /// What bounds request bodies.
    pub(crate) fn body_limits(&self) -> crate::data_plane::BodyLimits {
        crate::data_plane::BodyLimits {
            max_bytes: self.max_body_bytes,
            stall: Duration::from_secs(self.body_timeout_s),
            deadline: Duration::from_secs(self.request_timeout_s),
            min_rate: self.min_body_rate,
            grace: Duration::from_secs(self.min_body_rate_grace_s),
        }
    }

    /// This node's name in a cluster: HERVE_NODE_NAME, else the host name.
    pub fn node_name(&self) -> String {
        self.node_name
            .clone()
            .or_else(crate::sys::host_name)
            .unwrap_or_else(|| "herve".to_owned())
    }

    /// Where the other nodes reach this one, listening on `port`: HERVE_NODE_ADDR, else
    /// the listening address when it is a single one, else the host name.
    pub fn node_addr(&self, port: u16) -> String {
        if let Some(addr) = &self.node_addr {
            return addr.trim_end_matches('/').to_owned();
        }
        let host = if self.host.is_unspecified() {
            crate::sys::host_name().unwrap_or_else(|| "127.0.0.1".to_owned())
        } else {
            match self.host {
                IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            }
        };
        format!("http://{host}:{port}")
    }

    /// How many data-plane workers to run.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |cores| cores.get()),
            workers => workers as usize,
        }
    }

    /// How long in-flight requests get to finish when Herve stops.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_s)
    }

    /// How long a TLS handshake may take.
    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.tls_handshake_timeout_s)
    }

    /// How long a client may read nothing of a response.
    pub fn send_timeout(&self) -> Duration {
        Duration::from_secs(self.send_timeout_s)
    }
}

impl ConfigError {
    /// Prints the error, naming the environment variable at fault (clap names only the
    /// flag), or the help and version texts asked for, and exits.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Invalid(error) => exit_with(error),
            other => {
                eprintln!("error: {other}");
                std::process::exit(2);
            }
        }
    }
}

fn exit_with(error: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue};
    use clap::CommandFactory;
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        error.exit()
    };
    let flag = arg.split_whitespace().next().unwrap_or_default();
    let env = Config::command()
        .get_arguments()
        .find(|candidate| {
            candidate
                .get_long()
                .is_some_and(|long| flag == format!("--{long}"))
        })
        .and_then(|candidate| candidate.get_env())
        .map(|env| env.to_string_lossy().into_owned());
    match env {
        Some(env) => {
            let value = match error.get(ContextKind::InvalidValue) {
                Some(ContextValue::String(value)) => value.clone(),
                _ => String::new(),
            };
            let rendered = error.to_string();
            let reason = rendered
                .lines()
                .next()
                .and_then(|line| line.rsplit_once(": "))
                .map(|(_, reason)| reason.to_owned())
                .unwrap_or_default();
            eprintln!("error: invalid value '{value}' for {env} ({flag}): {reason}");
            std::process::exit(2);
        }
        None => error.exit(),
    }
}
