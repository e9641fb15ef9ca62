//! Logging: text for terminals, JSON for log collectors; level from `RUST_LOG` or a flag.

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| flag_filter(level));
    // Colours only on a terminal, never in log files or collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// `--log-level`, without kube-runtime's watcher warnings unless the level names kube-runtime:
/// it warns on every retry of a forbidden list (every 5 s, forever), while winflow says when
/// each watch starts failing, changes reason or recovers (see `watch_health`).
fn flag_filter(level: &str) -> EnvFilter {
    let filter = EnvFilter::new(level);
    if level.contains("kube_runtime") {
        return filter;
    }
    filter.add_directive("kube_runtime::watcher=error".parse().expect("a valid directive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The directives, not events through a subscriber: tracing caches each callsite's interest
    // process-wide, so events would depend on the other tests' subscribers.
    #[test]
    fn kube_runtimes_per_retry_watch_warnings_are_left_out_unless_asked_for() {
        for level in ["info", "debug", "winflow=debug,info"] {
            let filter = flag_filter(level).to_string();
            assert!(filter.contains("kube_runtime::watcher=error"), "{level}: {filter}");
        }
        let asked = flag_filter("info,kube_runtime=debug").to_string();
        assert!(!asked.contains("kube_runtime::watcher=error"), "{asked}");
    }
}
