//! Standard output that may be closed under us: `keepalive-lab watch URL | head -1` closes the pipe
//! after one line, and `println!` panics on the next write (Rust ignores SIGPIPE, so the write fails
//! with EPIPE instead of ending the program as it would end a C tool). Every command prints through
//! [`out!`] and [`outln!`] instead: a failed write marks stdout as gone, and `main` then ends the
//! command quietly, the way ripgrep does (exit 0 for a closed pipe, the reader has what it wanted).
//!
//! A command is ended by dropping its future, so what it started is stopped by the usual drops
//! (child programs stopped gracefully, connections closed).

use std::fmt;
use std::io::{ErrorKind, Write};
use std::sync::{LazyLock, OnceLock};

use tokio_util::sync::CancellationToken;

/// Cancelled once a write to stdout has failed.
static GONE: LazyLock<CancellationToken> = LazyLock::new(CancellationToken::new);
/// Why: a closed pipe is a reader who stopped reading; anything else (a full disk) is an error.
static WHY: OnceLock<ErrorKind> = OnceLock::new();

/// Writes `args` to stdout and flushes (a watched stream must show each chunk as it comes); after a
/// failed write, writes nothing more.
pub fn write(args: fmt::Arguments<'_>) {
    if GONE.is_cancelled() {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(err) = out.write_fmt(args).and_then(|()| out.flush()) {
        let _ = WHY.set(err.kind());
        GONE.cancel();
    }
}

/// Resolves once stdout is gone.
pub async fn gone() {
    GONE.cancelled().await;
}

/// The exit code for a command ended because stdout went away: 0 for a reader that closed the pipe,
/// 1 (with a line on stderr) for anything else.
pub fn exit_code() -> u8 {
    match WHY.get() {
        Some(ErrorKind::BrokenPipe) | None => 0,
        Some(kind) => {
            eprintln!("keepalive-lab: cannot write to standard output: {kind}");
            1
        }
    }
}

/// Narration for `tracing`, written through [`write`]: a closed stdout ends the demo quietly instead
/// of one "unable to write" complaint per event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Narration;

impl Write for Narration {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write(format_args!("{}", String::from_utf8_lossy(buf)));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Narration {
    type Writer = Narration;

    fn make_writer(&'a self) -> Self::Writer {
        Narration
    }
}

/// `print!` through [`write`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!($($arg)*))
    };
}

/// `println!` through [`write`].
macro_rules! outln {
    () => {
        $crate::stdout::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};
