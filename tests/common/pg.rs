//! A throwaway PostgreSQL cluster per test: `initdb` into a temp directory, `pg_ctl start` on a
//! free loopback port (password authentication over TCP, `fsync=off` for speed), stopped and
//! removed on drop. Under root the server runs as the `postgres` user (it refuses root).
//!
//! The server binaries are found through `LADDER_PG_BINDIR` (only there when it is set),
//! `pg_config --bindir`, `/usr/lib/postgresql/*/bin`, or `PATH`. When there are none, [`PgCluster::start`] prints
//! `SKIPPED: ...` and returns `None` (the test passes), unless `LADDER_REQUIRE_POSTGRES=1`, where it
//! panics (CI sets it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The superuser the clusters get, and its password (sent to `ladder` processes through
/// [`PASSWORD_ENV`], inline in URLs for in-process tests).
pub const PG_USER: &str = "ladder";
pub const PG_PASSWORD: &str = "ladder-test-password-8d1f";
/// The environment variable `store.password_env` names in test configs.
pub const PASSWORD_ENV: &str = "LADDER_TEST_PG_PASSWORD";

pub struct PgCluster {
    pub dir: PathBuf,
    pub port: u16,
    bindir: PathBuf,
    /// Run the server binaries as `postgres` (we are root).
    as_postgres: bool,
}

fn has_server(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() && dir.join("postgres").is_file()
}

/// Where `initdb`, `pg_ctl` and `postgres` are. `LADDER_PG_BINDIR`, when set, is the only place
/// looked at (so `LADDER_PG_BINDIR=/nowhere` shows what happens without a server).
pub fn find_bindir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("LADDER_PG_BINDIR") {
        let d = PathBuf::from(d);
        return has_server(&d).then_some(d);
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        candidates.push(String::from_utf8_lossy(&out.stdout).trim().into());
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        candidates.extend(versions.into_iter().map(|(_, p)| p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates.into_iter().find(|d| has_server(d))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    super::free_port()
}

impl PgCluster {
    /// A running cluster, or `None` (after printing why) when the server binaries are missing.
    pub fn start() -> Option<PgCluster> {
        let Some(bindir) = find_bindir() else {
            if std::env::var("LADDER_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("postgres server binaries not found (install Debian's postgresql) and LADDER_REQUIRE_POSTGRES=1");
            }
            eprintln!("SKIPPED: postgres server binaries not found (install Debian's postgresql)");
            return None;
        };
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!("ladder-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the cluster directory");
        std::fs::write(dir.join("pwfile"), PG_PASSWORD).expect("write the password file");
        if as_postgres {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(st.success(), "chown postgres {}", dir.display());
        }
        let mut cluster = PgCluster {
            dir,
            port: 0,
            bindir,
            as_postgres,
        };
        let data = cluster.dir.join("data");
        let out = cluster.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                PG_USER.as_ref(),
                "--pwfile".as_ref(),
                cluster.dir.join("pwfile").as_os_str(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
                "-N".as_ref(),
            ],
        );
        assert!(out.status.success(), "initdb failed:\n{}", text(&out));
        for _ in 0..3 {
            cluster.port = free_port();
            if cluster.start_server() {
                return Some(cluster);
            }
        }
        panic!("could not start postgres:\n{}", cluster.server_log());
    }

    fn run(&self, bin: &str, args: &[&std::ffi::OsStr]) -> Output {
        let exe = self.bindir.join(bin);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("running {bin}: {e}"))
    }

    /// `pg_ctl start` on `self.port`; false when it did not come up (e.g. the port was taken).
    pub fn start_server(&self) -> bool {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-o".as_ref(),
                opts.as_ref(),
                "start".as_ref(),
            ],
        );
        out.status.success()
    }

    /// `pg_ctl stop` (`fast`: disconnect clients, clean shutdown).
    pub fn stop_server(&self) {
        let data = self.dir.join("data");
        let out = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
        assert!(out.status.success(), "pg_ctl stop failed:\n{}", text(&out));
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// `postgres://ladder@127.0.0.1:PORT/DB` (no password: see [`PASSWORD_ENV`]).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The URL with the password inline (for in-process stores).
    pub fn url_with_password(&self, db: &str) -> String {
        format!("postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// Run `f` with a client of database `db` (on a plain thread: the `postgres` crate must not
    /// block an async one).
    pub fn with_client<T: Send>(&self, db: &str, f: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
        let url = self.url_with_password(db);
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect to the test cluster");
                f(&mut c)
            })
            .join()
            .expect("postgres client thread")
        })
    }

    /// A new, empty database.
    pub fn create_db(&self, name: &str) -> String {
        let stmt = format!("CREATE DATABASE {name}");
        self.with_client("postgres", |c| c.batch_execute(&stmt).expect("CREATE DATABASE"));
        name.to_string()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
        if std::thread::panicking() {
            eprintln!("===== postgres server log ({}) =====\n{}", self.dir.display(), self.server_log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
