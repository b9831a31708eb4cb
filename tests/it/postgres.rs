//! A throwaway PostgreSQL server for a test: `initdb` into a temporary directory,
//! `pg_ctl start` on a free loopback port, stopped (immediately) when dropped. As
//! root, the server runs as the `postgres` account, which PostgreSQL requires.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

pub struct Postgres {
    /// Holds the cluster's files; removed after the server stops.
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// Server options besides the port and addresses (TLS).
    extra: String,
}

/// The directory of PostgreSQL's server programs (Debian keeps them off the PATH).
fn server_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|versions| {
            versions
                .filter_map(Result::ok)
                .map(|version| version.path().join("bin"))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    if let Some(newest) = found.pop() {
        return newest;
    }
    let on_path = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|path| PathBuf::from(path.trim()));
    match on_path.as_ref().and_then(|path| path.parent()) {
        Some(bin) if !bin.as_os_str().is_empty() => bin.to_path_buf(),
        _ => panic!(
            "PostgreSQL's initdb is not installed (.ci/run installs the `postgresql` package)"
        ),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

impl Postgres {
    /// Creates and starts a server; panics with PostgreSQL's own words if it cannot.
    pub fn start() -> Postgres {
        Self::start_with(None)
    }

    /// A server that offers TLS with `issued` (a certificate for 127.0.0.1).
    pub fn start_tls(issued: &crate::tls_client::Issued) -> Postgres {
        Self::start_with(Some(issued))
    }

    fn start_with(tls: Option<&crate::tls_client::Issued>) -> Postgres {
        let bin = server_bin();
        let dir = tempfile::Builder::new()
            .prefix("herve-pg-")
            .tempdir()
            .expect("tempdir");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown to postgres failed");
        }
        let mut postgres = Postgres {
            dir,
            bin,
            port: 0,
            extra: String::new(),
        };
        let out = postgres.run(
            "initdb",
            &[
                "-D",
                &postgres.data().to_string_lossy(),
                "-U",
                "herve",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(issued) = tls {
            postgres.serve_tls(issued);
        }
        // A port found free may be taken before the server binds it: try another.
        for _ in 0..5 {
            postgres.port = free_port();
            if postgres.start_server() {
                return postgres;
            }
        }
        panic!("PostgreSQL did not start: {}", postgres.log());
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of PostgreSQL's programs, as `postgres` when this is root.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    fn start_server(&self) -> bool {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200{}",
            self.port,
            self.dir.path().display(),
            self.extra
        );
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-o",
                &options,
                "-l",
                &self.log_path().to_string_lossy(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        out.status.success()
    }

    /// Puts `issued` in the data directory and turns TLS on for the next start.
    fn serve_tls(&mut self, issued: &crate::tls_client::Issued) {
        use std::os::unix::fs::PermissionsExt;
        let (cert, key) = (
            self.data().join("server.crt"),
            self.data().join("server.key"),
        );
        std::fs::write(&cert, &issued.chain).expect("write cert");
        std::fs::write(&key, &issued.key).expect("write key");
        // The key must be the server account's own, readable by it alone.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&cert)
                .arg(&key)
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the TLS files failed");
        }
        self.extra = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert.display(),
            key.display()
        );
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// What the server wrote to its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The URL Herve is given.
    pub fn url(&self) -> String {
        format!("postgres://herve@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast: connections are closed).
    pub fn stop(&self) {
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Freezes the server and every process it started (SIGSTOP): connections stay
    /// open and nothing answers, as when the network to it is cut. `thaw` undoes it.
    pub fn freeze(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    /// Lets a frozen server go on.
    pub fn thaw(&self) {
        self.signal_all(libc::SIGCONT);
    }

    /// `signal` to the postmaster and its children (and only this server's).
    fn signal_all(&self, signal: i32) {
        let pidfile =
            std::fs::read_to_string(self.data().join("postmaster.pid")).expect("postmaster.pid");
        let postmaster: i32 = pidfile
            .lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .expect("the postmaster's pid");
        let children = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|stat| {
                        let after = stat.rsplit_once(") ")?.1.to_owned();
                        after.split(' ').nth(1)?.parse::<i32>().ok()
                    })
                    == Some(postmaster)
            });
        for pid in std::iter::once(postmaster).chain(children) {
            // SAFETY: a plain signal to a process this test started.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Starts the stopped server again, on the same port.
    pub fn restart(&self) {
        assert!(
            self.start_server(),
            "PostgreSQL did not start again: {}",
            self.log()
        );
    }

    /// Runs SQL with psql; its output, rows unaligned.
    pub fn sql(&self, statement: &str) -> String {
        let out = Command::new(self.psql())
            .args(["-X", "-A", "-t", "-d", &self.url(), "-c", statement])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn psql(&self) -> PathBuf {
        let beside = self.bin.join("psql");
        if beside.exists() {
            beside
        } else {
            PathBuf::from("psql")
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}
