//! A network namespace of the experiment's own, for the scenario no loopback trick can fake: a
//! network that silently loses every packet (iptables DROP), so that neither a FIN nor a RST ever
//! reaches the origin. Needs root, `ip` (iproute2) and `iptables`; without them [`Netns::create`]
//! says what is missing, and the scenario reports that it could not run.
//!
//! Sockets belong to the namespace of the thread that creates them, so [`Netns::sockets`] makes them
//! on a short-lived thread that entered the namespace; once made, the runtime uses them anywhere.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Netns {
    name: String,
}

/// What stopped a namespace from being made, entered or configured.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot run {program}: {source} (it needs iproute2 and iptables)")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    /// The command ran and refused; `stderr` is what it said.
    #[error("{command} failed (it needs root): {stderr}")]
    Refused { command: String, stderr: String },
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot enter {path}: {source}")]
    Enter { path: String, source: nix::Error },
    #[error("cannot make sockets in {path}: {source}")]
    Sockets {
        path: String,
        source: std::io::Error,
    },
    #[error("the namespace thread panicked")]
    Panicked,
}

fn run(program: &'static str, args: &[&str]) -> Result<(), NetnsError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn { program, source })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Refused {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

impl Netns {
    /// A fresh namespace with its loopback up; removed on drop.
    pub fn create() -> Result<Self, NetnsError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "keepalive-lab-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name])?;
        let netns = Self { name };
        run("ip", &["-n", &netns.name, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Runs `make` on a thread inside the namespace: the sockets it creates live there.
    pub fn sockets<T: Send + 'static>(
        &self,
        make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, NetnsError> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let namespace = match std::fs::File::open(&path) {
                Ok(namespace) => namespace,
                Err(source) => return Err(NetnsError::Open { path, source }),
            };
            if let Err(source) = nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            {
                return Err(NetnsError::Enter { path, source });
            }
            make().map_err(|source| NetnsError::Sockets { path, source })
        })
        .join()
        .map_err(|_| NetnsError::Panicked)?
    }

    /// `iptables ARGS` inside the namespace.
    pub fn iptables(&self, args: &[&str]) -> Result<(), NetnsError> {
        let mut full = vec!["netns", "exec", &self.name, "iptables"];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = run("ip", &["netns", "del", &self.name]) {
            tracing::warn!(%err, "network namespace left behind");
        }
    }
}
