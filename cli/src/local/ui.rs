//! What local mode shows while it works: progress bars on a terminal, plain lines otherwise.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// Progress and messages: bars on a terminal, plain lines otherwise.
#[derive(Clone)]
pub(super) struct Ui {
    mp: MultiProgress,
    tty: bool,
}

impl Ui {
    pub(super) fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        let target = if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            mp: MultiProgress::with_draw_target(target),
            tty,
        }
    }

    pub(super) fn say(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        if self.tty {
            let _ = self.mp.println(msg);
        } else {
            eprintln!("{msg}");
        }
    }

    pub(super) fn spinner(&self, msg: impl Into<String>) -> ProgressBar {
        let pb = self.mp.add(ProgressBar::new_spinner());
        pb.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.set_message(msg.into());
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }

    pub(super) fn bytes(&self, msg: impl Into<String>) -> ProgressBar {
        let pb = self.mp.add(ProgressBar::new(0));
        pb.set_style(
            ProgressStyle::with_template("{msg:40} [{bar:30}] {bytes}/{total_bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_message(msg.into());
        pb
    }

    pub(super) fn counter(&self, msg: impl Into<String>, n: u64) -> ProgressBar {
        let pb = self.mp.add(ProgressBar::new(n));
        pb.set_style(
            ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_message(msg.into());
        pb
    }
}
