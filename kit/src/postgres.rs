//! A PostgreSQL server of its own for a test or an experiment: a cluster made with Debian's
//! `initdb` in a temporary directory, served on a free loopback port, stopped (fast shutdown) and
//! removed when the last user lets go. As root, the server runs as the `postgres` user, since
//! PostgreSQL refuses to run as root.
//!
//! Tests in one process share one cluster while any of them runs ([`Cluster::shared`]), each with
//! a database of its own ([`Cluster::database`]): `initdb` takes a second or two, a database a few
//! milliseconds.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::program::{as_postgres_if_root, postgres_user, Error, Program};

/// How long a new cluster may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running PostgreSQL server on a free port, with a trusted superuser `postgres`.
pub struct Cluster {
    port: u16,
    bin: PathBuf,
    /// Its scratch directory (data, sockets, log) goes with it.
    _server: Program,
}

impl Cluster {
    /// Makes and starts a new cluster.
    pub fn start() -> Result<Self, Error> {
        let bin = bin_dir()?;
        let dir = std::env::temp_dir().join(format!(
            "keepalive-postgres-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let io = |source| Error::Io {
            name: "postgres".to_owned(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        if nix::unistd::geteuid().is_root() {
            let user = postgres_user()?;
            nix::unistd::chown(&dir, Some(user.uid), Some(user.gid))
                .map_err(|errno| io(errno.into()))?;
        }
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .stdin(Stdio::null());
        as_postgres_if_root(&mut initdb)?;
        let made = initdb.output().map_err(|source| Error::Start {
            name: "initdb".to_owned(),
            source,
        })?;
        if !made.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::Io {
                name: "initdb".to_owned(),
                source: std::io::Error::other(String::from_utf8_lossy(&made.stderr).into_owned()),
            });
        }
        let port = crate::ports::free().map_err(io)?.port();
        let log = std::fs::File::create(dir.join("postgres.log")).map_err(io)?;
        let mut server =
            Program::postgres(&bin, &data, &dir, port, Stdio::from(log))?.scratch(dir.clone());
        server.listening(([127, 0, 0, 1], port).into(), READY_WITHIN)?;
        let cluster = Self {
            port,
            bin,
            _server: server,
        };
        // Listening comes before accepting logins; createdb retries until the server takes them.
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// The cluster every caller in this process shares while one of them holds it; the first call
    /// (after the last holder let go) starts it.
    pub fn shared() -> Result<Arc<Self>, Error> {
        static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
        let mut shared = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cluster) = shared.upgrade() {
            return Ok(cluster);
        }
        let cluster = Arc::new(Self::start()?);
        *shared = Arc::downgrade(&cluster);
        Ok(cluster)
    }

    /// A new, empty database; returns its URL.
    pub fn database(&self) -> Result<String, Error> {
        let name = format!("keepalive_{:016x}", fastrand::u64(..));
        self.createdb(&name)?;
        Ok(self.url(&name))
    }

    /// The URL of database `name` as the superuser.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    fn wait_ready(&self) -> Result<(), Error> {
        let deadline = std::time::Instant::now() + READY_WITHIN;
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::NotListening {
                    name: "postgres".to_owned(),
                    addr: ([127, 0, 0, 1], self.port).into(),
                    within: READY_WITHIN,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn createdb(&self, name: &str) -> Result<(), Error> {
        let made = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                name,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Start {
                name: "createdb".to_owned(),
                source,
            })?;
        if made.status.success() {
            Ok(())
        } else {
            Err(Error::Io {
                name: "createdb".to_owned(),
                source: std::io::Error::other(String::from_utf8_lossy(&made.stderr).into_owned()),
            })
        }
    }
}

/// Debian's server binaries (`/usr/lib/postgresql/<version>/bin`, the newest), else `initdb` on
/// PATH.
fn bin_dir() -> Result<PathBuf, Error> {
    let debian = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(debian)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let initdb =
        crate::program::installed("initdb").map_err(|_| Error::Missing("postgresql".to_owned()))?;
    initdb
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::Missing("postgresql".to_owned()))
}
