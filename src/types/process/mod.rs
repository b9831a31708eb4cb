//! `process`: runs a program, supervises it, and routes `/<uuid>/...` to it.

mod containment;
mod instance;
mod logs;
mod orphans;
mod sandbox;
mod supervisor;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::contract::{
    FieldSpec, Fields, LogLines, RunningService, ServiceContext, ServiceError, ServiceType,
};
use crate::upstream::{Prober, Strategy, TrustedProxies};
pub(crate) use containment::reap_adopted_orphans;
use containment::{Containment, Unit};
use instance::{Board, Launcher, RunningProcess};
use logs::LogLimits;
use supervisor::{RestartPolicy, RunAs, Spec};

/// The variable that tells a copy of a program from the others (and finds what it
/// left behind).
pub(crate) const COPY_ENV: &str = "HERVE_SERVICE_COPY";
/// Environment variables Herve sets itself.
const RESERVED_ENV: [&str; 4] = ["PORT", "HERVE_SERVICE_UUID", "HERVE_SERVICE_NAME", COPY_ENV];
/// How often a followed log is looked at for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// The most copies one service may run.
const MAX_REPLICAS: u64 = 64;
/// The account programs run as when Herve runs as root and the service names none:
/// never root unless asked.
const DEFAULT_USER: &str = "nobody";

/// The `process` service type.
pub(crate) struct ProcessType {
    prober: Prober,
    /// Herve's data directory: out of every program's reach.
    herve_data: PathBuf,
    containment: Containment,
    trusted: TrustedProxies,
}

impl ProcessType {
    pub fn new(prober: Prober, herve_data: &Path, trusted: TrustedProxies) -> Self {
        ProcessType {
            trusted,
            prober,
            herve_data: herve_data.to_path_buf(),
            containment: Containment::detect(herve_data),
        }
    }
}

/// What a process service keeps from its registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ProcessConfig {
    /// The program and its arguments.
    pub command: Vec<String>,
    pub cwd: Option<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// `None`: Herve picks a free port at each start.
    pub port: Option<u16>,
    pub health_path: Option<String>,
    pub restart: RestartPolicy,
    pub stop_timeout_ms: u64,
    pub ready_timeout_ms: u64,
    pub timeout_ms: u64,
    /// The account to run as (a name or a number); `None`: Herve's own, or
    /// `nobody` when Herve runs as root.
    #[serde(default)]
    pub user: Option<String>,
    /// The group to run as; `None`: the account's primary group.
    #[serde(default)]
    pub group: Option<String>,
    /// Copies of the program, each on its own port.
    #[serde(default = "one")]
    pub replicas: usize,
    /// How requests are spread over the copies.
    #[serde(default = "Strategy::default")]
    pub strategy: Strategy,
    /// Bytes of output in one log file before it is rotated.
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// Rotated log files kept besides the current one.
    #[serde(default = "default_log_files")]
    pub log_files: usize,
}

fn one() -> usize {
    1
}

fn default_log_max_bytes() -> u64 {
    logs::MAX_FILE_BYTES
}

fn default_log_files() -> usize {
    logs::KEPT_FILES
}

impl ProcessConfig {
    fn from_fields(fields: &Fields) -> Result<ProcessConfig, ServiceError> {
        let command_line = fields.require("command")?;
        let invalid_command = |why: &str| {
            ServiceError::invalid_field("command", format!("The field 'command' {why}."))
        };
        let command = shlex::split(command_line)
            .ok_or_else(|| invalid_command("has unbalanced quotes or a trailing backslash"))?;
        if command.is_empty() {
            return Err(invalid_command("is empty"));
        }
        if command.iter().any(|arg| arg.contains('\0')) {
            return Err(invalid_command("must not contain NUL characters"));
        }

        let cwd = match fields.get("cwd").map(str::trim) {
            None | Some("") => None,
            Some(dir) => {
                if !Path::new(dir).is_dir() {
                    return Err(ServiceError::invalid_field(
                        "cwd",
                        format!("The field 'cwd' must be an existing directory; '{dir}' is not."),
                    ));
                }
                Some(dir.to_owned())
            }
        };
        if find_program(&command[0], cwd.as_deref()).is_none() {
            return Err(invalid_command(&format!(
                "names a program that cannot be found: '{}'",
                command[0]
            )));
        }

        let mut env = Vec::new();
        for entry in fields.get_all("env").filter(|e| !e.is_empty()) {
            let valid_key = |key: &str| {
                let mut chars = key.chars();
                chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            };
            match entry.split_once('=') {
                Some((key, value)) if valid_key(key) && !value.contains('\0') => {
                    if RESERVED_ENV.contains(&key) {
                        return Err(ServiceError::invalid_field(
                            "env",
                            format!("The field 'env' must not set {key}: Herve sets it."),
                        ));
                    }
                    env.push(entry.to_owned());
                }
                _ => {
                    return Err(ServiceError::invalid_field(
                        "env",
                        format!("The field 'env' must be KEY=VALUE with KEY of letters, digits and '_'; '{entry}' is not."),
                    ))
                }
            }
        }

        let port = match fields.get("port").map(str::trim) {
            None | Some("") => None,
            Some(_) => Some(fields.number("port", 0, 1..=65535)? as u16),
        };
        let restart = fields.choice("restart", &RestartPolicy::CHOICES)?;
        let user = fields.optional("user").map(str::to_owned);
        let group = fields.optional("group").map(str::to_owned);
        if let Some(user) = &user {
            let account = crate::sys::account(user).ok().flatten().ok_or_else(|| {
                ServiceError::invalid_field(
                    "user",
                    format!("The field 'user' names no account of this system: '{user}'."),
                )
            })?;
            if !crate::sys::is_root() && account.uid != crate::sys::euid() {
                return Err(ServiceError::invalid_field(
                    "user",
                    "The field 'user' may name another account than Herve's only when Herve runs as root.",
                ));
            }
        }
        if let Some(group) = &group {
            if crate::sys::group_id(group).ok().flatten().is_none() {
                return Err(ServiceError::invalid_field(
                    "group",
                    format!("The field 'group' names no group of this system: '{group}'."),
                ));
            }
            if !crate::sys::is_root() {
                return Err(ServiceError::invalid_field(
                    "group",
                    "The field 'group' may be set only when Herve runs as root.",
                ));
            }
        }
        let replicas = fields.number("replicas", 1, 1..=MAX_REPLICAS)? as usize;
        if replicas > 1 && port.is_some() {
            return Err(ServiceError::invalid_field(
                "replicas",
                "The field 'replicas' needs ports of Herve's choosing: several copies cannot share the fixed 'port'.",
            ));
        }
        Ok(ProcessConfig {
            command,
            cwd,
            env,
            port,
            replicas,
            strategy: fields.choice("strategy", &Strategy::CHOICES)?,
            log_max_bytes: fields.number(
                "log_max_bytes",
                logs::MAX_FILE_BYTES,
                64 * 1024..=1024 * 1024 * 1024,
            )?,
            log_files: fields.number(
                "log_files",
                logs::KEPT_FILES as u64,
                0..=logs::MOST_FILES as u64,
            )? as usize,
            health_path: fields.url_path("health_path")?,
            restart,
            stop_timeout_ms: fields.number("stop_timeout_ms", 10_000, 0..=600_000)?,
            ready_timeout_ms: fields.number("ready_timeout_ms", 30_000, 100..=600_000)?,
            timeout_ms: fields.number("timeout_ms", 30_000, 1..=3_600_000)?,
            user,
            group,
        })
    }
}

/// Who a program runs as, and its home.
struct Identity {
    /// `None`: as Herve itself.
    run_as: Option<RunAs>,
    name: String,
}

impl ProcessConfig {
    /// The account this service's program runs as: the one named, else Herve's own,
    /// but never root unless asked.
    fn identity(&self) -> Result<Identity, ServiceError> {
        let wanted = match (&self.user, crate::sys::is_root()) {
            (Some(user), _) => user.clone(),
            (None, true) => DEFAULT_USER.to_owned(),
            (None, false) => {
                let own = crate::sys::account_of(crate::sys::euid()).ok().flatten();
                return Ok(Identity {
                    run_as: None,
                    name: own.map(|account| account.name).unwrap_or_default(),
                });
            }
        };
        let account = crate::sys::account(&wanted).ok().flatten().ok_or_else(|| {
            ServiceError::failed(format!("The account '{wanted}' does not exist."))
        })?;
        let gid = match &self.group {
            Some(group) => crate::sys::group_id(group).ok().flatten().ok_or_else(|| {
                ServiceError::failed(format!("The group '{group}' does not exist."))
            })?,
            None => account.gid,
        };
        let same = account.uid == crate::sys::euid() && self.group.is_none();
        Ok(Identity {
            run_as: (!same).then_some(RunAs {
                uid: account.uid,
                gid,
            }),
            name: account.name,
        })
    }
}

/// The working directory of a program that names none: a directory of its own,
/// outside Herve's data directory, that its account may use.
fn work_dir(uuid: uuid::Uuid, run_as: Option<RunAs>) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = std::env::temp_dir().join(format!("herve-{uuid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error),
    }
    // Shared temporary directories invite tricks: it must be a real directory, ours
    // or the account's.
    let metadata = std::fs::symlink_metadata(&dir)?;
    let owner_ok = metadata.uid() == crate::sys::euid()
        || run_as.is_some_and(|run_as| metadata.uid() == run_as.uid);
    if !metadata.is_dir() || !owner_ok {
        return Err(std::io::Error::other(format!(
            "{} exists and is not a directory of Herve's",
            dir.display()
        )));
    }
    if let Some(run_as) = run_as {
        std::os::unix::fs::chown(&dir, Some(run_as.uid), Some(run_as.gid))?;
    }
    Ok(dir)
}

/// Herve's environment without its own settings and secrets (`HERVE_*`, `AUTH_*`),
/// with the service's entries, identity and account.
fn program_env(
    config: &ProcessConfig,
    ctx: &ServiceContext,
    identity: &Identity,
    home: &Path,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(key, _)| !key.starts_with("HERVE_") && !key.starts_with("AUTH_"))
        .collect();
    let mut set = |key: &str, value: String| {
        env.retain(|(existing, _)| existing != key);
        env.push((key.to_owned(), value));
    };
    if identity.run_as.is_some() {
        set("HOME", home.display().to_string());
        set("USER", identity.name.clone());
        set("LOGNAME", identity.name.clone());
    }
    for (key, value) in config.env.iter().filter_map(|entry| entry.split_once('=')) {
        set(key, value.to_owned());
    }
    set("HERVE_SERVICE_UUID", ctx.uuid().to_string());
    set("HERVE_SERVICE_NAME", ctx.name().to_owned());
    env
}

/// Where `program` would be found: as a path (relative to `cwd`), or on `PATH`.
fn find_program(program: &str, cwd: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = match cwd {
            Some(cwd) if !program.starts_with('/') => Path::new(cwd).join(program),
            _ => PathBuf::from(program),
        };
        return executable(&path).then_some(path);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| executable(candidate))
    })
}

fn logs_dir(ctx: &ServiceContext) -> PathBuf {
    ctx.data_dir().join("logs")
}

#[async_trait]
impl ServiceType for ProcessType {
    type Config = ProcessConfig;

    fn name(&self) -> &str {
        "process"
    }

    fn description(&self) -> &str {
        "A service running a program and routing requests to it"
    }

    fn fields(&self) -> Vec<FieldSpec> {
        vec![
            FieldSpec::required(
                "command",
                "The program and its arguments; $PORT is the port it must listen on.",
            ),
            FieldSpec::optional("cwd", "Its working directory (an existing one)."),
            FieldSpec::optional("env", "KEY=VALUE, one per entry.").many(),
            FieldSpec::optional(
                "port",
                "A fixed port for it; Herve picks a free one when left out.",
            ),
            FieldSpec::optional("health_path", "A path that answers 2xx when it is ready."),
            FieldSpec::optional("restart", "always, on-failure or never.").or("always"),
            FieldSpec::optional("replicas", "Copies of the program, 1 to 64.").or("1"),
            FieldSpec::optional("strategy", "round_robin, weighted or least_conn.")
                .or("round_robin"),
            FieldSpec::optional("user", "The account it runs as."),
            FieldSpec::optional("group", "The group it runs as."),
            FieldSpec::optional("stop_timeout_ms", "After SIGTERM, how long before SIGKILL.")
                .or("10000"),
            FieldSpec::optional("ready_timeout_ms", "How long a start may take.").or("30000"),
            FieldSpec::optional(
                "timeout_ms",
                "How long it has to start answering a request.",
            )
            .or("30000"),
            FieldSpec::optional("log_max_bytes", "Bytes of output in one log file.").or("1048576"),
            FieldSpec::optional("log_files", "Rotated log files kept.").or("2"),
        ]
    }

    async fn register(
        &self,
        _ctx: &ServiceContext,
        fields: &Fields,
    ) -> Result<ProcessConfig, ServiceError> {
        ProcessConfig::from_fields(fields)
    }

    /// Two programs cannot listen on one fixed port; on ports of Herve's, they can.
    fn runs_side_by_side(&self, config: &ProcessConfig) -> bool {
        config.port.is_none()
    }

    async fn start(
        &self,
        ctx: &ServiceContext,
        config: &ProcessConfig,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        if config.command.is_empty() {
            return Err(ServiceError::failed("The stored command is empty."));
        }
        let limits = LogLimits {
            max_bytes: config.log_max_bytes,
            files: config.log_files,
        };
        let log = logs::LogWriter::open(&logs_dir(ctx), limits)
            .map_err(|e| ServiceError::failed(format!("Cannot write the service's logs: {e}")))?;
        let identity = config.identity()?;
        let own_dir = work_dir(ctx.uuid(), identity.run_as).map_err(|e| {
            ServiceError::failed(format!("Cannot make the program's working directory: {e}"))
        })?;
        let cwd = config
            .cwd
            .as_ref()
            .map_or_else(|| own_dir.clone(), PathBuf::from);
        let env = program_env(config, ctx, &identity, &own_dir);
        // A program of another account is kept out by the directory's permissions;
        // one of Herve's own account needs Landlock for that.
        let hide = identity.run_as.is_none().then(|| self.herve_data.clone());
        let replicas = config.replicas.clamp(1, MAX_REPLICAS as usize);
        // Cancelled when everything must go now (a fence): every copy's stop token
        // descends from it too, so no copy waits for a reload to let go of the list.
        let hurry = ctx.hurry().child_token();
        let launcher = Launcher {
            template: Spec {
                argv: config.command.clone(),
                cwd,
                env,
                run_as: identity.run_as,
                containment: self.containment.clone(),
                hide,
                port: 0,
                unit: Unit::new(ctx.uuid()),
                health_path: config.health_path.clone(),
                restart: config.restart,
                stop_timeout: Duration::from_millis(config.stop_timeout_ms),
                hurry: hurry.clone(),
                ready_timeout: Duration::from_millis(config.ready_timeout_ms),
            },
            fixed_port: config.port,
            log,
            prober: self.prober.clone(),
            board: Board::new(ctx.reporter().clone(), replicas),
            proxy_options: instance::proxy_options(
                config.strategy,
                Duration::from_millis(config.timeout_ms),
                replicas,
                self.trusted.clone(),
            ),
            uuid: ctx.uuid(),
            dropped: hurry.child_token(),
        };
        ctx.reporter().report(crate::contract::Report::Starting);
        let abandoned = {
            let ctx = ctx.clone();
            async move { ctx.abandoned().await }
        };
        let running = RunningProcess::start(
            launcher,
            replicas,
            futures_util::FutureExt::shared(Box::pin(abandoned)),
        )
        .await?;
        Ok(Box::new(running))
    }

    async fn recover(&self, services: &[ServiceContext]) {
        self.containment.recover().await;
        orphans::kill_leftovers_of(services.iter().map(ServiceContext::uuid).collect()).await;
    }

    async fn unregister(
        &self,
        ctx: &ServiceContext,
        _config: &ProcessConfig,
    ) -> Result<(), ServiceError> {
        orphans::kill_leftovers(ctx.uuid()).await;
        self.containment.kill_cgroup(ctx.uuid()).await;
        let own_dir = std::env::temp_dir().join(format!("herve-{}", ctx.uuid()));
        if let Err(error) = tokio::fs::remove_dir_all(&own_dir).await {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %own_dir.display(), %error, "could not remove a program's working directory");
            }
        }
        match tokio::fs::remove_dir_all(ctx.data_dir()).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(ServiceError::failed(format!(
                "Cannot remove the service's files: {error}"
            ))),
        }
    }

    async fn follow_logs(
        &self,
        ctx: &ServiceContext,
        _config: &ProcessConfig,
    ) -> Result<Option<LogLines>, ServiceError> {
        let dir = logs_dir(ctx);
        let follower = tokio::task::spawn_blocking(move || logs::Follower::at_end(&dir))
            .await
            .map_err(|e| ServiceError::failed(e.to_string()))?;
        let lines = futures_util::stream::unfold(
            (follower, std::collections::VecDeque::new()),
            |(mut follower, mut pending)| async move {
                loop {
                    if let Some(line) = pending.pop_front() {
                        return Some((line, (follower, pending)));
                    }
                    tokio::time::sleep(FOLLOW_EVERY).await;
                    let (back, lines) = tokio::task::spawn_blocking(move || {
                        let lines = follower.read();
                        (follower, lines)
                    })
                    .await
                    .ok()?;
                    follower = back;
                    pending.extend(lines);
                }
            },
        );
        Ok(Some(Box::pin(lines)))
    }

    async fn logs(
        &self,
        ctx: &ServiceContext,
        _config: &ProcessConfig,
        tail: usize,
    ) -> Result<Option<Vec<String>>, ServiceError> {
        let dir = logs_dir(ctx);
        tokio::task::spawn_blocking(move || logs::tail(&dir, tail))
            .await
            .map_err(|e| ServiceError::failed(e.to_string()))?
            .map(Some)
            .map_err(|e| ServiceError::failed(format!("Cannot read the service's logs: {e}")))
    }
}
