//! The standard `process_*` metrics (memory, CPU, file descriptors, threads, start time), read
//! from `/proc/self` on each scrape. prometheus-client has no process collector; these few
//! /proc reads are all it takes. Missing files (not Linux) just leave the metrics out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Linux reports CPU times in /proc in units of USER_HZ, which is 100 on every architecture.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Default)]
pub(crate) struct ProcessCollector;

/// What /proc says about this process.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ProcessStats {
    pub resident_bytes: Option<i64>,
    pub virtual_bytes: Option<i64>,
    pub threads: Option<i64>,
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<i64>,
}

/// `VmRSS:   12345 kB` → bytes.
fn status_kib(status: &str, field: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// From /proc/self/status, /proc/self/stat (utime, stime, starttime) and /proc/stat (btime).
pub(crate) fn parse(status: &str, stat: &str, system_stat: &str) -> ProcessStats {
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // `rest` starts at field 3 (state): utime is field 14, stime 15, starttime 22.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let boot = system_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|t| t.trim().parse::<f64>().ok());
    ProcessStats {
        resident_bytes: status_kib(status, "VmRSS:"),
        virtual_bytes: status_kib(status, "VmSize:"),
        threads: status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|t| t.trim().parse().ok()),
        cpu_seconds: field(14).zip(field(15)).map(|(u, s)| (u + s) / TICKS_PER_SECOND),
        start_time_seconds: boot.zip(field(22)).map(|(b, t)| b + t / TICKS_PER_SECOND),
        open_fds: None,
    }
}

fn read() -> ProcessStats {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let mut stats = parse(
        &read("/proc/self/status"),
        &read("/proc/self/stat"),
        &read("/proc/stat"),
    );
    stats.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count().try_into().unwrap_or(i64::MAX));
    stats
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: Option<i64>) -> Result<(), std::fmt::Error> {
    let Some(value) = value else { return Ok(()) };
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = read();
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            stats.resident_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            stats.virtual_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors",
            stats.open_fds,
        )?;
        gauge(&mut encoder, "process_threads", "Number of OS threads", stats.threads)?;
        if let Some(cpu) = stats.cpu_seconds {
            let metric = ConstCounter::new(cpu);
            let name = "process_cpu_seconds";
            metric.encode(encoder.encode_descriptor(
                name,
                "User and system CPU time spent in seconds",
                None,
                metric.metric_type(),
            )?)?;
        }
        if let Some(start) = stats.start_time_seconds {
            let metric = ConstGauge::new(start);
            let help = "Start time of the process since the Unix epoch in seconds";
            metric.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                help,
                None,
                metric.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        let status = "Name:\twinflow\nVmSize:\t  204800 kB\nVmRSS:\t   20480 kB\nThreads:\t7\n";
        // The command name holds a space and a parenthesis, as /proc allows.
        let stat = "4242 (win flow) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 7 0 1000 209715200 5120";
        let system = "cpu  1 2 3\nbtime 1800000000\nprocesses 9\n";
        let stats = parse(status, stat, system);
        assert_eq!(stats.resident_bytes, Some(20 * 1024 * 1024));
        assert_eq!(stats.virtual_bytes, Some(200 * 1024 * 1024));
        assert_eq!(stats.threads, Some(7));
        assert_eq!(stats.cpu_seconds, Some(3.0));
        assert_eq!(stats.start_time_seconds, Some(1_800_000_010.0));
        assert_eq!(parse("", "", ""), ProcessStats::default());
    }

    #[test]
    fn this_process_is_measured() {
        let stats = read();
        assert!(stats.resident_bytes.unwrap() > 0);
        assert!(stats.open_fds.unwrap() >= 3);
        assert!(stats.start_time_seconds.unwrap() > 1_600_000_000.0);
    }
}
