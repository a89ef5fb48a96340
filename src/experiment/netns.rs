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

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|err| format!("cannot run {program}: {err} (it needs iproute2 and iptables)"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed (it needs root): {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Netns {
    /// A fresh namespace with its loopback up; removed on drop.
    pub fn create() -> Result<Self, String> {
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
    ) -> Result<T, String> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let namespace =
                std::fs::File::open(&path).map_err(|err| format!("cannot open {path}: {err}"))?;
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|err| format!("cannot enter {path}: {err}"))?;
            make().map_err(|err| format!("cannot make sockets in {path}: {err}"))
        })
        .join()
        .map_err(|_| "the namespace thread panicked".to_owned())?
    }

    /// `iptables ARGS` inside the namespace.
    pub fn iptables(&self, args: &[&str]) -> Result<(), String> {
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
