//! Progress of the one long step (mksquashfs) on a terminal: bytes written, files, ETA
//! (indicatif). Nothing is drawn when stdout is not a terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar, or nothing.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// No output.
    pub fn disabled() -> Progress {
        Progress { bar: None }
    }

    /// A bar over `total_bytes` (the image's file bytes) labelled with `files`.
    pub fn bytes(total_bytes: u64, files: u64, label: &str) -> Progress {
        let bar = ProgressBar::new(total_bytes.max(1));
        let style = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(format!("{label}: {files} files"));
        Progress { bar: Some(bar) }
    }

    /// Bytes done so far (capped at the total).
    pub fn set_bytes(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done.min(bar.length().unwrap_or(done)));
        }
    }

    /// Removes the bar.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
