//! Human or JSON output, progress bars, and small formatting helpers.

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON with `--json`, else the human text.
    pub fn emit<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("output serialises")
            );
        } else {
            let text = human();
            if !text.is_empty() {
                println!("{}", text.trim_end());
            }
        }
    }

    /// A byte progress bar on stderr; hidden with `--json` or when stderr is not a terminal.
    pub fn progress(&self, total: Option<u64>, label: &str) -> ProgressBar {
        let target = if self.json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = match total {
            Some(n) => ProgressBar::with_draw_target(Some(n), target).with_style(
                ProgressStyle::with_template(
                    "{msg:>8} [{bar:36}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::with_draw_target(None, target).with_style(
                ProgressStyle::with_template("{msg:>8} {spinner} {bytes} {binary_bytes_per_sec}")
                    .expect("template"),
            ),
        };
        bar.set_message(label.to_string());
        bar
    }
}

pub fn bytes(n: u64) -> String {
    HumanBytes(n).to_string()
}

/// `YYYY-MM-DD HH:MM:SSZ` for seconds since the Unix epoch (UTC).
pub fn utc(secs: i64) -> String {
    bootcast::time::rfc3339(secs).replacen('T', " ", 1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(super::utc(1_700_000_000), "2023-11-14 22:13:20Z");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00Z");
    }
}
