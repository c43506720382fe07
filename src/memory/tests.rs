use std::collections::HashMap;
use std::path::Path;

use bytesize::ByteSize;

use crate::config::Config;
use crate::memory::{
    Budget, Consumer, DEFAULTS_KEPT_FROM, HostMemory, MemoryLimit, MemoryMetrics, Pressure, SHARES, Source, derive,
};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

fn host(files: &[(&str, &str)]) -> HostMemory {
    let files: HashMap<String, String> = files.iter().map(|(p, t)| (p.to_string(), t.to_string())).collect();
    HostMemory::from_files(|path: &Path| files.get(path.to_str().unwrap()).cloned())
}

const MEMINFO: &str = "MemTotal:        8048576 kB\nMemFree:          123456 kB\nMemAvailable:    4000000 kB\n";

#[test]
fn cgroup_v2_limit_in_a_container() {
    let h = host(&[
        ("/proc/self/cgroup", "0::/\n"),
        ("/sys/fs/cgroup/memory.max", "536870912\n"),
        ("/proc/meminfo", MEMINFO),
    ]);
    assert_eq!(h, HostMemory { cgroup_limit: Some(512 * MIB), mem_total: Some(8_048_576 * 1024) });
    let b = Budget::resolve(MemoryLimit::Auto, h).unwrap();
    assert_eq!(b, Budget { bytes: 384 * MIB, source: Source::Cgroup { limit: 512 * MIB } });
}

#[test]
fn cgroup_v2_of_a_systemd_service_is_found_through_proc_self_cgroup() {
    let h = host(&[
        ("/proc/self/cgroup", "0::/system.slice/lumen.service\n"),
        ("/sys/fs/cgroup/system.slice/lumen.service/memory.max", "1073741824\n"),
        ("/sys/fs/cgroup/memory.max", "max\n"),
        ("/proc/meminfo", MEMINFO),
    ]);
    assert_eq!(h.cgroup_limit, Some(GIB));
}

#[test]
fn cgroup_v2_max_means_no_limit_so_ram_counts() {
    let h = host(&[
        ("/proc/self/cgroup", "0::/user.slice\n"),
        ("/sys/fs/cgroup/user.slice/memory.max", "max\n"),
        ("/proc/meminfo", MEMINFO),
    ]);
    assert_eq!(h.cgroup_limit, None);
    let b = Budget::resolve(MemoryLimit::Auto, h).unwrap();
    assert_eq!(b.bytes, 8_048_576 * 1024 / 2);
    assert_eq!(b.source, Source::MemTotal { total: 8_048_576 * 1024 });
}

#[test]
fn cgroup_v1_limit_and_its_unlimited_value() {
    let v1 = "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n";
    let limited = host(&[
        ("/proc/self/cgroup", v1),
        ("/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "268435456\n"),
        ("/proc/meminfo", MEMINFO),
    ]);
    assert_eq!(limited.cgroup_limit, Some(256 * MIB));
    // A container with its own cgroup namespace sees its limit at the root of the mount.
    let namespaced =
        host(&[("/proc/self/cgroup", "12:memory:/\n"), ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "268435456\n")]);
    assert_eq!(namespaced.cgroup_limit, Some(256 * MIB));
    let unlimited = host(&[
        ("/proc/self/cgroup", "12:memory:/\n"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n"),
        ("/proc/meminfo", MEMINFO),
    ]);
    assert_eq!(unlimited.cgroup_limit, None);
}

#[test]
fn a_cgroup_limit_above_the_ram_limits_nothing() {
    let h = HostMemory { cgroup_limit: Some(64 * GIB), mem_total: Some(8 * GIB) };
    assert_eq!(Budget::resolve(MemoryLimit::Auto, h).unwrap().source, Source::MemTotal { total: 8 * GIB });
}

#[test]
fn no_information_no_budget_unless_configured() {
    assert_eq!(Budget::resolve(MemoryLimit::Auto, host(&[])), None);
    let b = Budget::resolve(MemoryLimit::Bytes(ByteSize::mib(128)), host(&[])).unwrap();
    assert_eq!(b, Budget { bytes: 128 * MIB, source: Source::Configured });
    assert_eq!((b.high_water(), b.low_water()), (128 * MIB * 9 / 10, 128 * MIB * 8 / 10));
}

#[test]
fn meminfo_and_limit_files_that_do_not_parse() {
    assert_eq!(super::parse_mem_total("MemFree: 1 kB\n"), None);
    assert_eq!(super::parse_mem_total("MemTotal: lots kB\n"), None);
    assert_eq!(super::parse_cgroup_limit(""), None);
    assert_eq!(super::parse_cgroup_limit("0\n"), None);
    assert_eq!(super::parse_cgroup_limit("-1\n"), None);
}

#[test]
fn memory_limit_parses_auto_and_sizes() {
    let parse = |v: &str| Config::from_toml(&format!("[server]\nmemory_limit = {v}\n")).map(|c| c.server.memory_limit);
    assert_eq!(parse("\"auto\"").unwrap(), MemoryLimit::Auto);
    assert_eq!(parse("\"128MiB\"").unwrap(), MemoryLimit::Bytes(ByteSize::mib(128)));
    assert_eq!(parse("1073741824").unwrap(), MemoryLimit::Bytes(ByteSize::gib(1)));
    let err = format!("{:#}", parse("\"lots\"").unwrap_err());
    // TOML's error shows the key's line; the message says what a value must be.
    assert!(err.contains("memory_limit = \"lots\""), "{err}");
    assert!(err.contains("\"lots\" is neither \"auto\" nor a size"), "{err}");
    let mut c = Config::default();
    c.server.memory_limit = MemoryLimit::Bytes(ByteSize::mib(16));
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("server.memory_limit = 16.0 MiB is below the minimum of 32.0 MiB"), "{err}");
}

fn configured(bytes: u64) -> Budget {
    Budget { bytes, source: Source::Configured }
}

#[test]
fn a_128_mib_budget_gives_proportionally_small_limits() {
    let mut c = Config::default();
    let shares = derive(&mut c, &configured(128 * MIB));
    assert_eq!(c.store.head_max_size, ByteSize::b(128 * MIB / 10 / 3), "a head may hold 3 x head_max_size");
    assert_eq!(c.store.row_group_rows, 16_384);
    assert_eq!(c.server.max_inflight_request_bytes, ByteSize::b(128 * MIB * 15 / 100));
    assert_eq!(c.server.max_request_size, c.server.max_inflight_request_bytes, "a body must fit in flight");
    assert_eq!(c.query.sql_max_memory, ByteSize::b(128 * MIB / 5));
    assert_eq!(c.query.max_samples as u64, 128 * MIB / 5 / 16);
    assert!(shares.iter().all(|s| s.derived), "{shares:?}");
    // The derived values still pass validation, and the consumers' limits stay within the budget.
    c.validate().unwrap();
    let total: u64 = shares.iter().map(|s| s.limit).sum();
    assert_eq!(shares[0].limit, c.store.head_max_size.as_u64() * 3);
    assert!(total <= 128 * MIB * 3 / 4, "{total}");
}

#[test]
fn a_big_budget_keeps_every_default() {
    for budget in [DEFAULTS_KEPT_FROM, 8 * GIB, 1 << 50] {
        let mut c = Config::default();
        let shares = derive(&mut c, &configured(budget));
        assert_eq!(c, Config::default(), "budget {budget}");
        assert!(shares.iter().all(|s| s.limit <= s.share), "{shares:?}");
    }
    // Just below it, SQL's memory and the decoded runs are cut first; the heads (3 × 16 MiB of a 10 %
    // share) keep their default down to 480 MiB.
    let mut c = Config::default();
    derive(&mut c, &configured(DEFAULTS_KEPT_FROM - 100 * MIB));
    assert!(c.query.sql_max_memory < Config::default().query.sql_max_memory);
    assert!(c.store.decoded_cache_max_bytes < Config::default().store.decoded_cache_max_bytes);
    assert_eq!(c.store.head_max_size, Config::default().store.head_max_size);
    let mut c = Config::default();
    derive(&mut c, &configured(400 * MIB));
    assert!(c.store.head_max_size < Config::default().store.head_max_size);
    assert_eq!(c.store.scan_cache_max_bytes.as_u64(), 400 * MIB / 50, "2 % of the budget");
    assert_eq!(c.store.log_page_cache_max_bytes.as_u64(), 400 * MIB / 20, "5 % of the budget");
}

#[test]
fn derived_is_never_above_the_default_nor_below_the_floor() {
    let d = Config::default();
    for mib in [32, 64, 100, 128, 333, 512, 1000, 1279, 1439, 4096] {
        let mut c = Config::default();
        derive(&mut c, &configured(mib * MIB));
        assert!(c.store.head_max_size <= d.store.head_max_size && c.store.head_max_size.as_u64() >= MIB);
        assert!(c.server.max_inflight_request_bytes <= d.server.max_inflight_request_bytes);
        assert!(c.server.max_request_size <= c.server.max_inflight_request_bytes);
        assert!(c.query.sql_max_memory <= d.query.sql_max_memory && c.query.sql_max_memory.as_u64() >= 8 * MIB);
        assert!(c.query.max_samples <= d.query.max_samples && c.query.max_samples >= 100_000);
        assert!(c.store.row_group_rows <= d.store.row_group_rows && c.store.row_group_rows >= 4096);
        c.validate().unwrap_or_else(|e| panic!("budget {mib} MiB: {e}"));
    }
}

#[test]
fn a_key_the_user_set_wins() {
    let mut c = Config::from_toml(
        "[server]\nmemory_limit = \"128MiB\"\nmax_request_size = \"32MiB\"\n[store]\nhead_max_size = \"40MiB\"\n\
         [query]\nmax_samples = 20000000\n",
    )
    .unwrap();
    let shares = derive(&mut c, &configured(128 * MIB));
    assert_eq!(c.store.head_max_size, ByteSize::mib(40));
    assert_eq!(c.query.max_samples, 20_000_000);
    assert_eq!(c.server.max_request_size, ByteSize::mib(32));
    // The in-flight budget follows the budget, but not below the body size the user asked for.
    assert_eq!(c.server.max_inflight_request_bytes, ByteSize::mib(32));
    assert_eq!(c.query.sql_max_memory, ByteSize::b(128 * MIB / 5));
    let derived: Vec<(Consumer, bool)> = shares.iter().map(|s| (s.consumer, s.derived)).collect();
    assert_eq!(
        derived,
        [
            (Consumer::LogHead, false),
            (Consumer::MetricHead, false),
            (Consumer::InflightRequests, true),
            (Consumer::Sql, true),
            (Consumer::Promql, false)
        ]
    );
    c.validate().unwrap();
}

#[test]
fn shares_leave_a_quarter_for_the_rest() {
    let total: u64 = SHARES.iter().map(|(_, p)| p).sum();
    assert_eq!(total, 75);
}

static RESIDENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn fake_resident() -> u64 {
    RESIDENT.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn pressure_starts_at_the_high_water_mark_and_ends_below_the_low_one() {
    let metrics = MemoryMetrics::default();
    let p = Pressure::with_reader(Some(configured(100 * MIB)), metrics.clone(), fake_resident);
    let at = |mib: u64| RESIDENT.store(mib * MIB, std::sync::atomic::Ordering::Relaxed);
    at(89);
    assert!(p.admit_query().is_ok());
    at(90);
    let err = p.admit_query().unwrap_err();
    assert_eq!(
        err,
        "the server is over 90% of its memory budget (server.memory_limit = 100.0 MiB, resident 90.0 MiB); retry \
         later, or raise server.memory_limit"
    );
    assert_eq!(metrics.pressure.get(), 1);
    at(85);
    assert!(p.admit_query().is_err(), "between the marks the refusals go on");
    at(79);
    assert!(p.admit_query().is_ok());
    assert_eq!(metrics.pressure.get(), 0);
    at(85);
    assert!(p.admit_query().is_ok(), "and start again only at the high-water mark");
    assert_eq!(metrics.budget.get(), 100 * MIB as i64);

    // Memory the allocator keeps after the heads were flushed: queries are taken again, and pressure
    // starts again only when resident memory grows 10% of the budget past it.
    at(95);
    assert!(p.admit_query().is_err());
    p.release_retained(95 * MIB);
    assert_eq!(metrics.pressure.get(), 0);
    assert!(p.admit_query().is_ok());
    at(104);
    assert!(p.admit_query().is_ok());
    at(105);
    assert!(p.admit_query().is_err());
    at(79);
    assert!(p.admit_query().is_ok(), "under the low-water mark the retained figure is forgotten");
    at(90);
    assert!(p.admit_query().is_err());

    let none = Pressure::with_reader(None, MemoryMetrics::default(), fake_resident);
    at(1000);
    assert!(none.admit_query().is_ok(), "no budget, no refusals");
}

#[test]
fn only_queries_are_refused() {
    use super::query_api;
    assert_eq!(query_api("/loki/api/v1/query_range"), Some("loki"));
    assert_eq!(query_api("/loki/api/v1/detected_field/level/values"), Some("loki"));
    assert_eq!(query_api("/api/v1/query"), Some("prometheus"));
    assert_eq!(query_api("/api/v1/sql"), Some("sql"));
    for cheap in ["/loki/api/v1/labels", "/api/v1/series", "/api/v1/labels", "/loki/api/v1/push", "/api/v1/write"] {
        assert_eq!(query_api(cheap), None, "{cheap}");
    }
}
