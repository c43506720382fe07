//! The metrics every Prometheus exporter has about its own process (`process_*`, read from `/proc/self`
//! at each scrape, as the Go and Python clients do) and `lumen_build_info{version,revision}`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// The version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git revision this build was made from (`build.rs`; `LUMEN_REVISION` overrides), or "unknown".
pub const REVISION: &str = env!("LUMEN_REVISION");

/// Registers the process collector and `lumen_build_info` in `registry`.
pub fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(ProcessCollector));
    let info = prometheus_client::metrics::info::Info::new(vec![
        ("version".to_string(), VERSION.to_string()),
        ("revision".to_string(), REVISION.to_string()),
    ]);
    registry.sub_registry_with_prefix("lumen").register("build", "the version and git revision of this lumen", info);
}

/// What `/proc/self/stat` and friends say.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
}

/// The resident set size of this process in bytes, from `/proc/self/statm` alone (cheaper than [`read`]:
/// the memory budget samples it every second and at each query); 0 when it cannot be read. The file stays
/// open and is read from its start each time: opening it walked the path on every query (a tenth of a
/// trivial query's server time with the cgroup lookups it came with).
pub fn resident_bytes() -> u64 {
    use std::os::unix::fs::FileExt;
    static STATM: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    let Some(file) = STATM.get_or_init(|| std::fs::File::open("/proc/self/statm").ok()) else { return 0 };
    let mut buf = [0u8; 256];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    let pages =
        std::str::from_utf8(&buf[..n]).ok().and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok()).unwrap_or(0);
    pages * rustix::param::page_size() as u64
}

/// Reads the stats of this process; fields that cannot be read stay 0.
pub fn read() -> ProcessStats {
    let mut s = ProcessStats::default();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as u64;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // `rest` starts at field 3 (state): field n is f[n - 3].
            let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            s.cpu_seconds = (num(14) + num(15)) as f64 / ticks;
            s.virtual_bytes = num(23);
            s.resident_bytes = num(24) * page;
            let boot = std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|t| t.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok()))
                .unwrap_or(0);
            s.start_time_seconds = boot as f64 + num(22) as f64 / ticks;
        }
    }
    s.open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
    s.max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines().find(|l| l.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    s
}

#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = read();
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "user and system CPU time spent",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, Option<Unit>, f64); 5] = [
            ("process_resident_memory", "resident memory size", Some(Unit::Bytes), s.resident_bytes as f64),
            ("process_virtual_memory", "virtual memory size", Some(Unit::Bytes), s.virtual_bytes as f64),
            (
                "process_start_time",
                "start time of the process since the Unix epoch",
                Some(Unit::Seconds),
                s.start_time_seconds,
            ),
            ("process_open_fds", "open file descriptors", None, s.open_fds as f64),
            ("process_max_fds", "the most file descriptors the process may open", None, s.max_fds as f64),
        ];
        for (name, help, unit, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let s = super::read();
        assert!(s.resident_bytes > 1 << 20, "{s:?}");
        assert!(s.virtual_bytes >= s.resident_bytes, "{s:?}");
        assert!(s.open_fds >= 3 && s.max_fds >= s.open_fds, "{s:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(s.start_time_seconds > now - 3600.0 && s.start_time_seconds <= now + 1.0, "{s:?}");
        assert!(s.cpu_seconds >= 0.0);
        let rss = super::resident_bytes();
        assert!(rss > 1 << 20 && rss < s.virtual_bytes, "statm says {rss}, {s:?}");
    }

    /// The file stays open between reads: each read must still see the size of that moment.
    #[test]
    fn resident_bytes_follows_the_process() {
        let before = super::resident_bytes();
        // Far more than other tests running in this process at the same time could free meanwhile.
        let mut grown = vec![0u8; 256 << 20];
        for b in grown.iter_mut().step_by(4096) {
            *b = 1;
        }
        let after = super::resident_bytes();
        assert!(after >= before + (192 << 20), "resident {before} -> {after} after touching 256 MiB");
        assert_eq!(grown.iter().step_by(4096).map(|&b| b as usize).sum::<usize>(), grown.len() / 4096);
    }
}
