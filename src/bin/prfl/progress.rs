//! A one-line progress bar on stderr (redrawn in place on a terminal, a line every 10% otherwise).

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    name: String,
    total: u64,
    done: u64,
    start: Instant,
    tty: bool,
    last_printed: u64,
}

impl Progress {
    pub fn new(name: &str, total: u64) -> Self {
        Progress {
            name: name.to_string(),
            total: total.max(1),
            done: 0,
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last_printed: 0,
        }
    }

    pub fn set(&mut self, done: u64) {
        self.done = done;
        self.last_printed = done;
    }

    /// One unit done; `msg` describes it.
    pub fn tick(&mut self, msg: &str) {
        self.done += 1;
        let frac = self.done as f64 / self.total as f64;
        let width = 24;
        let filled = ((frac * width as f64) as usize).min(width);
        let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
        let line = format!(
            "{} [{bar}] {}/{} {:.0}s | {msg}",
            self.name,
            self.done,
            self.total,
            self.start.elapsed().as_secs_f64()
        );
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else if self.done == self.total || (self.done - self.last_printed) * 10 >= self.total {
            let _ = writeln!(err, "{line}");
            self.last_printed = self.done;
        }
    }

    /// Clears the bar so that a table can be printed.
    pub fn clear(&self) {
        if self.tty {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }

    pub fn finish(&self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}
