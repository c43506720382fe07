//! The node's own basic metrics, read from procfs and sysfs and named as node_exporter's default Linux collectors
//! name them, so that dashboards built for node_exporter ("Node Exporter Full") work on what the agent ships.
//!
//! [`collect`] reads one snapshot. Covered, by node_exporter collector:
//!
//! * `cpu`, `stat`: `node_cpu_seconds_total{cpu,mode}`, `node_cpu_guest_seconds_total{cpu,mode}`,
//!   `node_boot_time_seconds`, `node_context_switches_total`, `node_intr_total`, `node_forks_total`,
//!   `node_procs_running`, `node_procs_blocked` (from `/proc/stat`, ticks of USER_HZ = 100);
//! * `loadavg`: `node_load1`, `node_load5`, `node_load15`;
//! * `meminfo`: `node_memory_<Field>_bytes` for every `kB` field of `/proc/meminfo` (`Active(anon)` becomes
//!   `Active_anon`), `node_memory_<Field>` for the unitless ones (`HugePages_Total`);
//! * `vmstat`: `node_vmstat_{oom_kill,pgpg*,pswp*,pg*fault*}`;
//! * `pressure`: `node_pressure_{cpu,io,memory}_{waiting,stalled}_seconds_total`;
//! * `filefd`, `entropy`: `node_filefd_{allocated,maximum}`, `node_entropy_{available,pool_size}_bits`;
//! * `filesystem`: `node_filesystem_{size,free,avail}_bytes`, `node_filesystem_{files,files_free}`,
//!   `node_filesystem_readonly`, `node_filesystem_device_error` `{device,fstype,mountpoint}`, with
//!   node_exporter's default exclusions (pseudo file systems such as proc, sysfs, cgroup, overlay; mount points
//!   under /dev, /proc, /sys, /var/lib/docker/...). Like node_exporter it keeps tmpfs;
//! * `netdev`: `node_network_{receive,transmit}_<counter>_total{device}` for all 16 counters of `/proc/net/dev`,
//!   `lo` included;
//! * `netclass`: `node_network_up`, `node_network_mtu_bytes`, `node_network_speed_bytes`,
//!   `node_network_transmit_queue_length` `{device}` (from `<sys>/class/net`);
//! * `diskstats`: `node_disk_*{device}` for every field of `/proc/diskstats` (sectors of 512 bytes, milliseconds
//!   as seconds), skipping loop, ram, zram, fd devices and partitions of sd/hd/vd/xvd/nvme disks as node_exporter's
//!   default device exclusion does;
//! * `uname`, `time`: `node_uname_info{domainname,machine,nodename,release,sysname,version}` (from
//!   `/proc/sys/kernel`, falling back to the `uname` call), `node_time_seconds`.
//!
//! A file that is missing or unreadable (containers often lack some) only leaves its metrics out. File system
//! sizes come from `statvfs` on the mount point as this process sees it; a network or FUSE mount that does not
//! answer within 5 seconds is reported with `node_filesystem_device_error` 1 and not asked again until its
//! pending call returns, as node_exporter does with stuck mounts.

use std::path::Path;
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wire::prom::{OwnedSeries, Sample};

/// Collects node metrics from `proc_root` (normally `/proc`) and `sys_root` (normally `/sys`) at `t_ms`.
///
/// Every series has one sample at `t_ms` and labels sorted by name, `__name__` included; the caller adds its
/// own labels (`job`, `instance`, `node`) and keeps them sorted. Blocking: it reads files and calls `statvfs`, and
/// can take up to 5 seconds per unresponsive network mount, so run it on a blocking thread.
pub fn collect(proc_root: &Path, sys_root: &Path, rootfs: &Path, t_ms: i64) -> Vec<OwnedSeries> {
    let mut out = Out { series: Vec::with_capacity(512), t_ms };
    if let Some(text) = read(&proc_root.join("stat")) {
        stat(&text, &mut out);
    }
    if let Some(text) = read(&proc_root.join("loadavg")) {
        loadavg(&text, &mut out);
    }
    if let Some(text) = read(&proc_root.join("meminfo")) {
        meminfo(&text, &mut out);
    }
    if let Some(text) = read(&proc_root.join("vmstat")) {
        vmstat(&text, &mut out);
    }
    for resource in ["cpu", "io", "memory"] {
        if let Some(text) = read(&proc_root.join("pressure").join(resource)) {
            pressure(resource, &text, &mut out);
        }
    }
    if let Some(text) = read(&proc_root.join("sys/fs/file-nr")) {
        let fields: Vec<&str> = text.split_ascii_whitespace().collect();
        if let (Some(allocated), Some(maximum)) = (fields.first().and_then(num), fields.get(2).and_then(num)) {
            out.push("node_filefd_allocated", &[], allocated);
            out.push("node_filefd_maximum", &[], maximum);
        }
    }
    for (file, name) in [("entropy_avail", "node_entropy_available_bits"), ("poolsize", "node_entropy_pool_size_bits")]
    {
        if let Some(v) = read(&proc_root.join("sys/kernel/random").join(file)).and_then(|t| num(&t.trim())) {
            out.push(name, &[], v);
        }
    }
    // PID 1's mounts are the host's when the agent shares the host's PID namespace; our own are the fallback.
    // Sizes through the host's root when it is mounted (`agent.rootfs_dir`, node_exporter's --path.rootfs):
    // the mount points are the host's, this process may not see them itself.
    if let Some(text) = read(&proc_root.join("1/mounts")).or_else(|| read(&proc_root.join("mounts"))) {
        filesystems(&text, &mut out, |mount_point, fs_type| statvfs_guarded(&under_root(rootfs, mount_point), fs_type));
    }
    // `net/dev` follows the reader's network namespace (it is `self/net/dev`): in a container that is the
    // container's. PID 1's is the host's whenever the host's /proc is what `proc_root` shows.
    if let Some(text) = read(&proc_root.join("1/net/dev")).or_else(|| read(&proc_root.join("net/dev"))) {
        net_dev(&text, &mut out);
    }
    net_class(&sys_root.join("class/net"), &mut out);
    if let Some(text) = read(&proc_root.join("diskstats")) {
        diskstats(&text, &mut out);
    }
    uname(&proc_root.join("sys/kernel"), &mut out);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(t_ms as f64 / 1000.0, |d| d.as_secs_f64());
    out.push("node_time_seconds", &[], now);
    out.series
}

/// `mount_point` (a path of the host) as this process reaches it: under `rootfs` unless that is `/`.
fn under_root(rootfs: &Path, mount_point: &str) -> String {
    if rootfs.as_os_str().is_empty() || rootfs == Path::new("/") {
        return mount_point.to_owned();
    }
    rootfs.join(mount_point.trim_start_matches('/')).to_string_lossy().into_owned()
}

/// Clock ticks per second in `/proc/stat` (USER_HZ; 100 on every architecture Linux runs on today).
const USER_HZ: f64 = 100.0;

/// Bytes per sector in `/proc/diskstats`, whatever the device's real sector size.
const SECTOR_BYTES: f64 = 512.0;

/// How long a `statvfs` on a network or FUSE mount may take before the mount counts as stuck.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(5);

/// Mount points whose `statvfs` call timed out and has not returned yet.
static STUCK_MOUNTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The series being collected.
struct Out {
    series: Vec<OwnedSeries>,
    t_ms: i64,
}

impl Out {
    /// Adds a series `name{labels}` with one sample; empty label values are left out, as Prometheus does.
    fn push(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        let mut all: Vec<(String, String)> = Vec::with_capacity(labels.len() + 1);
        all.push(("__name__".to_owned(), name.to_owned()));
        all.extend(labels.iter().filter(|(_, v)| !v.is_empty()).map(|(n, v)| ((*n).to_owned(), (*v).to_owned())));
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.series.push((all, vec![Sample { t: self.t_ms, v }]));
    }
}

/// Reads a whole file; `None` if it is missing or unreadable (logged at debug level unless simply missing).
fn read(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) => {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(%error, path = %path.display(), "cannot read node metrics file");
            }
            None
        }
    }
}

/// A number as procfs writes it.
fn num(s: &impl AsRef<str>) -> Option<f64> {
    s.as_ref().parse::<f64>().ok()
}

/// `/proc/stat`: per-CPU times and the kernel's counters.
fn stat(text: &str, out: &mut Out) {
    const MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];
    const GUEST_MODES: [&str; 2] = ["user", "nice"];
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(key) = fields.next() else { continue };
        if let Some(cpu) = key.strip_prefix("cpu") {
            // The `cpu` line sums all CPUs; node_exporter leaves it out.
            if cpu.is_empty() || !cpu.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let ticks: Vec<f64> = fields.map_while(|f| num(&f)).collect();
            for (mode, v) in MODES.into_iter().zip(&ticks) {
                out.push("node_cpu_seconds_total", &[("cpu", cpu), ("mode", mode)], v / USER_HZ);
            }
            for (mode, v) in GUEST_MODES.into_iter().zip(ticks.iter().skip(MODES.len())) {
                out.push("node_cpu_guest_seconds_total", &[("cpu", cpu), ("mode", mode)], v / USER_HZ);
            }
            continue;
        }
        let name = match key {
            "intr" => "node_intr_total",
            "ctxt" => "node_context_switches_total",
            "btime" => "node_boot_time_seconds",
            "processes" => "node_forks_total",
            "procs_running" => "node_procs_running",
            "procs_blocked" => "node_procs_blocked",
            _ => continue,
        };
        if let Some(v) = fields.next().and_then(|f| num(&f)) {
            out.push(name, &[], v);
        }
    }
}

/// `/proc/loadavg`: the 1, 5 and 15 minute load averages.
fn loadavg(text: &str, out: &mut Out) {
    let loads: Vec<f64> = text.split_ascii_whitespace().take(3).map_while(|f| num(&f)).collect();
    for (name, v) in ["node_load1", "node_load5", "node_load15"].into_iter().zip(loads) {
        out.push(name, &[], v);
    }
}

/// `/proc/meminfo`: `Key: value [kB]` lines.
fn meminfo(text: &str, out: &mut Out) {
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else { continue };
        let mut parts = rest.split_ascii_whitespace();
        let Some(v) = parts.next().and_then(|f| num(&f)) else { continue };
        // node_exporter rewrites `Active(anon)` as `Active_anon`.
        let key = key.trim().replace('(', "_").replace(')', "");
        match parts.next() {
            // node_exporter takes any unit for kB, the only one the kernel writes.
            Some(_) => out.push(&format!("node_memory_{key}_bytes"), &[], v * 1024.0),
            None => out.push(&format!("node_memory_{key}"), &[], v),
        }
    }
}

/// `/proc/vmstat`: the fields node_exporter keeps by default (`^(oom_kill|pgpg|pswp|pg.*fault).*`).
fn vmstat(text: &str, out: &mut Out) {
    for line in text.lines() {
        let Some((name, value)) = line.split_once(' ') else { continue };
        let keep = name.starts_with("oom_kill")
            || name.starts_with("pgpg")
            || name.starts_with("pswp")
            || name.strip_prefix("pg").is_some_and(|rest| rest.contains("fault"));
        if keep && let Some(v) = num(&value.trim()) {
            out.push(&format!("node_vmstat_{name}"), &[], v);
        }
    }
}

/// `/proc/pressure/<resource>`: `some ... total=<µs>` (waiting) and `full ... total=<µs>` (stalled).
fn pressure(resource: &str, text: &str, out: &mut Out) {
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let what = match fields.next() {
            Some("some") => "waiting",
            Some("full") => "stalled",
            _ => continue,
        };
        let total = fields.find_map(|f| f.strip_prefix("total=")).and_then(|f| num(&f));
        if let Some(micros) = total {
            out.push(&format!("node_pressure_{resource}_{what}_seconds_total"), &[], micros / 1e6);
        }
    }
}

/// `/proc/net/dev`: per-interface counters, 8 received then 8 transmitted.
fn net_dev(text: &str, out: &mut Out) {
    const RECEIVE: [&str; 8] = ["bytes", "packets", "errs", "drop", "fifo", "frame", "compressed", "multicast"];
    const TRANSMIT: [&str; 8] = ["bytes", "packets", "errs", "drop", "fifo", "colls", "carrier", "compressed"];
    for line in text.lines() {
        // The two header lines have no colon.
        let Some((device, counters)) = line.split_once(':') else { continue };
        let device = device.trim();
        let values: Vec<f64> = counters.split_ascii_whitespace().map_while(|f| num(&f)).collect();
        if device.is_empty() || values.len() < RECEIVE.len() + TRANSMIT.len() {
            continue;
        }
        for (what, v) in RECEIVE.iter().zip(&values) {
            out.push(&format!("node_network_receive_{what}_total"), &[("device", device)], *v);
        }
        for (what, v) in TRANSMIT.iter().zip(&values[RECEIVE.len()..]) {
            out.push(&format!("node_network_transmit_{what}_total"), &[("device", device)], *v);
        }
    }
}

/// `<sys>/class/net/<device>/`: operational state, MTU, speed and transmit queue length.
fn net_class(dir: &Path, out: &mut Out) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut devices: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    devices.sort_unstable();
    for device in devices {
        let path = dir.join(&device);
        // `bonding_masters` and the like are files, not interfaces.
        if !path.is_dir() {
            continue;
        }
        let value = |file: &str| read(&path.join(file)).and_then(|t| num(&t.trim()));
        let labels = [("device", device.as_str())];
        if let Some(state) = read(&path.join("operstate")) {
            out.push("node_network_up", &labels, if state.trim() == "up" { 1.0 } else { 0.0 });
        }
        if let Some(mtu) = value("mtu") {
            out.push("node_network_mtu_bytes", &labels, mtu);
        }
        // Reading `speed` fails for an interface that is down or virtual, and gives -1 when unknown.
        if let Some(mbits) = value("speed").filter(|s| *s >= 0.0) {
            out.push("node_network_speed_bytes", &labels, mbits * 1e6 / 8.0);
        }
        if let Some(len) = value("tx_queue_len") {
            out.push("node_network_transmit_queue_length", &labels, len);
        }
    }
}

/// `/proc/diskstats`: one line per block device, `major minor name` then up to 17 counters.
fn diskstats(text: &str, out: &mut Out) {
    /// Sectors to bytes.
    const SECTORS: Scale = Scale::Times(SECTOR_BYTES);
    /// Milliseconds to seconds.
    const MS: Scale = Scale::Per(1000.0);
    const ONE: Scale = Scale::Times(1.0);
    const FIELDS: [(&str, Scale); 17] = [
        ("node_disk_reads_completed_total", ONE),
        ("node_disk_reads_merged_total", ONE),
        ("node_disk_read_bytes_total", SECTORS),
        ("node_disk_read_time_seconds_total", MS),
        ("node_disk_writes_completed_total", ONE),
        ("node_disk_writes_merged_total", ONE),
        ("node_disk_written_bytes_total", SECTORS),
        ("node_disk_write_time_seconds_total", MS),
        ("node_disk_io_now", ONE),
        ("node_disk_io_time_seconds_total", MS),
        ("node_disk_io_time_weighted_seconds_total", MS),
        ("node_disk_discards_completed_total", ONE),
        ("node_disk_discards_merged_total", ONE),
        ("node_disk_discarded_sectors_total", ONE),
        ("node_disk_discard_time_seconds_total", MS),
        ("node_disk_flush_requests_total", ONE),
        ("node_disk_flush_requests_time_seconds_total", MS),
    ];
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace().skip(2);
        let Some(device) = fields.next() else { continue };
        if disk_excluded(device) {
            continue;
        }
        for ((name, scale), v) in FIELDS.into_iter().zip(fields.map_while(|f| num(&f))) {
            let v = match scale {
                Scale::Times(factor) => v * factor,
                Scale::Per(divisor) => v / divisor,
            };
            out.push(name, &[("device", device)], v);
        }
    }
}

/// How a raw counter becomes its metric's unit (dividing keeps `1234 ms` exactly `1.234 s`).
#[derive(Clone, Copy)]
enum Scale {
    Times(f64),
    Per(f64),
}

/// node_exporter's default device exclusion, `^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$`: RAM and loop
/// devices, floppies, and partitions of whole disks (whose I/O the disk's line already counts).
fn disk_excluded(device: &str) -> bool {
    let prefix = device.trim_end_matches(|c: char| c.is_ascii_digit());
    if prefix.len() == device.len() {
        return false;
    }
    let disk_letter = |p: &str| {
        ["xvd", "hd", "sd", "vd"].iter().any(|kind| {
            p.strip_prefix(kind).is_some_and(|rest| rest.len() == 1 && rest.as_bytes()[0].is_ascii_lowercase())
        })
    };
    let nvme_partition = |p: &str| {
        // nvme<digits>n<digits>p
        let Some(rest) = p.strip_prefix("nvme").and_then(|r| r.strip_suffix('p')) else { return false };
        let Some((controller, namespace)) = rest.split_once('n') else { return false };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        digits(controller) && digits(namespace)
    };
    matches!(prefix, "ram" | "zram" | "loop" | "fd") || disk_letter(prefix) || nvme_partition(prefix)
}

/// One mounted file system worth reporting.
#[derive(Debug, Clone, PartialEq)]
struct Mount {
    device: String,
    mount_point: String,
    fs_type: String,
    read_only: bool,
}

/// What `statvfs` says about a file system, in node_exporter's units.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FsStats {
    size_bytes: f64,
    free_bytes: f64,
    avail_bytes: f64,
    files: f64,
    files_free: f64,
}

/// The mounts of a `/proc/<pid>/mounts` file that node_exporter reports by default, once per
/// (device, mount point, type).
fn mounts(text: &str) -> Vec<Mount> {
    const EXCLUDED_TYPES: &[&str] = &[
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "fusectl",
        "hugetlbfs",
        "iso9660",
        "mqueue",
        "nsfs",
        "overlay",
        "proc",
        "procfs",
        "pstore",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "squashfs",
        "erofs",
        "sysfs",
        "tracefs",
    ];
    let mut found: Vec<Mount> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let [device, mount_point, fs_type, options, ..] = fields[..] else { continue };
        if EXCLUDED_TYPES.contains(&fs_type) {
            continue;
        }
        let mount_point = unescape_octal(mount_point);
        if mount_point_excluded(&mount_point) {
            continue;
        }
        let mount = Mount {
            device: unescape_octal(device),
            mount_point,
            fs_type: fs_type.to_owned(),
            read_only: options.split(',').any(|o| o == "ro"),
        };
        let seen = found
            .iter()
            .any(|m| m.device == mount.device && m.mount_point == mount.mount_point && m.fs_type == mount.fs_type);
        if !seen {
            found.push(mount);
        }
    }
    found
}

/// node_exporter's default mount point exclusion,
/// `^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)`.
fn mount_point_excluded(mount_point: &str) -> bool {
    let Some(rest) = mount_point.strip_prefix('/') else { return false };
    let under = |dir: &str| rest.strip_prefix(dir).is_some_and(|r| r.is_empty() || r.starts_with('/'));
    let below = |dir: &str| rest.strip_prefix(dir).is_some_and(|r| !r.is_empty());
    under("dev")
        || under("proc")
        || under("sys")
        || below("run/credentials/")
        || below("var/lib/docker/")
        || below("var/lib/containers/storage/")
}

/// Undoes the `\ooo` octal escapes the kernel writes for blanks and backslashes in mount fields.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match escape {
            Some(d) => {
                let value = (u32::from(d[0] - b'0') << 6) | (u32::from(d[1] - b'0') << 3) | u32::from(d[2] - b'0');
                // Three octal digits can exceed a byte (\777); such a field is left as written.
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// File system metrics for every reported mount in `text`, sized by `stat(mount_point, fs_type)`.
fn filesystems(text: &str, out: &mut Out, mut stat: impl FnMut(&str, &str) -> Option<FsStats>) {
    for mount in mounts(text) {
        let labels =
            [("device", mount.device.as_str()), ("fstype", mount.fs_type.as_str()), ("mountpoint", &mount.mount_point)];
        out.push("node_filesystem_readonly", &labels, if mount.read_only { 1.0 } else { 0.0 });
        let Some(stats) = stat(&mount.mount_point, &mount.fs_type) else {
            out.push("node_filesystem_device_error", &labels, 1.0);
            continue;
        };
        out.push("node_filesystem_device_error", &labels, 0.0);
        out.push("node_filesystem_size_bytes", &labels, stats.size_bytes);
        out.push("node_filesystem_free_bytes", &labels, stats.free_bytes);
        out.push("node_filesystem_avail_bytes", &labels, stats.avail_bytes);
        out.push("node_filesystem_files", &labels, stats.files);
        out.push("node_filesystem_files_free", &labels, stats.files_free);
    }
}

/// `statvfs` of a mount point; `None` if it fails.
fn statvfs(mount_point: &str) -> Option<FsStats> {
    match rustix::fs::statvfs(mount_point) {
        Ok(s) => {
            // The block counts are in units of the fragment size, which Linux sets to the block size.
            let unit = s.f_frsize as f64;
            Some(FsStats {
                size_bytes: s.f_blocks as f64 * unit,
                free_bytes: s.f_bfree as f64 * unit,
                avail_bytes: s.f_bavail as f64 * unit,
                files: s.f_files as f64,
                files_free: s.f_ffree as f64,
            })
        }
        Err(error) => {
            tracing::debug!(%error, mountpoint = mount_point, "statvfs failed");
            None
        }
    }
}

/// File system types whose `statvfs` waits on a server or a user-space daemon, and so can hang.
fn may_hang(fs_type: &str) -> bool {
    const NETWORK: [&str; 13] =
        ["nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs", "lustre", "gpfs", "beegfs", "davfs"];
    NETWORK.contains(&fs_type) || fs_type.starts_with("fuse")
}

/// [`statvfs`], on a helper thread with [`MOUNT_TIMEOUT`] for file systems that may hang; a mount that timed out
/// stays in [`STUCK_MOUNTS`] (and is not asked again) until its call returns.
fn statvfs_guarded(mount_point: &str, fs_type: &str) -> Option<FsStats> {
    if !may_hang(fs_type) {
        return statvfs(mount_point);
    }
    let lock = || STUCK_MOUNTS.lock().unwrap_or_else(PoisonError::into_inner);
    if lock().iter().any(|m| m == mount_point) {
        return None;
    }
    let (tx, rx) = mpsc::channel();
    let path = mount_point.to_owned();
    let spawned = std::thread::Builder::new().name("lumen-statvfs".to_owned()).spawn(move || {
        let res = statvfs(&path);
        // Clear the stuck mark and hand over the result under the lock, so that the waiter either sees the result
        // or has marked the mount before this runs.
        let mut stuck = lock();
        stuck.retain(|m| *m != path);
        // The waiter may have given up; then nobody needs the result.
        let _ = tx.send(res);
    });
    if let Err(error) = spawned {
        tracing::debug!(%error, mountpoint = mount_point, "cannot spawn a statvfs thread");
        return None;
    }
    match rx.recv_timeout(MOUNT_TIMEOUT) {
        Ok(res) => res,
        Err(_) => {
            let mut stuck = lock();
            if let Ok(res) = rx.try_recv() {
                return res;
            }
            stuck.push(mount_point.to_owned());
            tracing::warn!(mountpoint = mount_point, fstype = fs_type, "statvfs timed out, mount marked stuck");
            None
        }
    }
}

/// `node_uname_info` from `/proc/sys/kernel` (`ostype`, `osrelease`, `version`, `arch`, `hostname`,
/// `domainname`), each falling back to the `uname` call when its file is missing.
fn uname(kernel: &Path, out: &mut Out) {
    let sys = rustix::system::uname();
    let field = |file: &str, fallback: &std::ffi::CStr| {
        read(&kernel.join(file))
            .map(|t| t.trim_end_matches('\n').to_owned())
            .unwrap_or_else(|| fallback.to_string_lossy().into_owned())
    };
    let labels = [
        ("domainname", field("domainname", sys.domainname())),
        ("machine", field("arch", sys.machine())),
        ("nodename", field("hostname", sys.nodename())),
        ("release", field("osrelease", sys.release())),
        ("sysname", field("ostype", sys.sysname())),
        ("version", field("version", sys.version())),
    ];
    let labels: Vec<(&str, &str)> = labels.iter().map(|(n, v)| (*n, v.as_str())).collect();
    out.push("node_uname_info", &labels, 1.0);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use wire::prom::OwnedSeries;

    use super::{FsStats, Out};

    fn out() -> Out {
        Out { series: Vec::new(), t_ms: 42 }
    }

    /// The value of the one series `name{labels}` (labels besides `__name__`, any order).
    fn get(series: &[OwnedSeries], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: Vec<(&str, &str)> = labels.to_vec();
        want.push(("__name__", name));
        want.sort_unstable();
        let found: Vec<&OwnedSeries> = series
            .iter()
            .filter(|(l, _)| {
                let mut have: Vec<(&str, &str)> = l.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                have.sort_unstable();
                have == want
            })
            .collect();
        assert!(found.len() <= 1, "{name}{labels:?} appears {} times", found.len());
        found.first().map(|(_, samples)| samples[0].v)
    }

    fn count(series: &[OwnedSeries], name: &str) -> usize {
        series.iter().filter(|(l, _)| l.iter().any(|(n, v)| n == "__name__" && v == name)).count()
    }

    #[test]
    fn parses_proc_stat() {
        let text = "cpu  10132153 290696 3084719 46828483 16683 0 25195 0 175628 0\n\
                    cpu0 1393280 32966 572056 13343292 6130 0 17875 0 23933 0\n\
                    cpu1 1335 0 0 1 0 0 0 0\n\
                    intr 8885917 17 0 0 0\n\
                    ctxt 38014093\n\
                    btime 1418183276\n\
                    processes 26442\n\
                    procs_running 2\n\
                    procs_blocked 1\n\
                    softirq 5057579 250191 1481983 1647 211099 186066 0 1783454 622196 12499 510660\n";
        let mut out = out();
        super::stat(text, &mut out);
        let s = &out.series;
        assert_eq!(get(s, "node_cpu_seconds_total", &[("cpu", "0"), ("mode", "user")]), Some(13932.8));
        assert_eq!(get(s, "node_cpu_seconds_total", &[("cpu", "0"), ("mode", "idle")]), Some(133432.92));
        assert_eq!(get(s, "node_cpu_seconds_total", &[("cpu", "0"), ("mode", "softirq")]), Some(178.75));
        assert_eq!(get(s, "node_cpu_guest_seconds_total", &[("cpu", "0"), ("mode", "user")]), Some(239.33));
        assert_eq!(get(s, "node_cpu_seconds_total", &[("cpu", "1"), ("mode", "steal")]), Some(0.0));
        // The summed `cpu` line is not reported; cpu1 has no guest columns.
        assert_eq!(count(s, "node_cpu_seconds_total"), 16);
        assert_eq!(count(s, "node_cpu_guest_seconds_total"), 2);
        assert_eq!(get(s, "node_intr_total", &[]), Some(8885917.0));
        assert_eq!(get(s, "node_context_switches_total", &[]), Some(38014093.0));
        assert_eq!(get(s, "node_boot_time_seconds", &[]), Some(1418183276.0));
        assert_eq!(get(s, "node_forks_total", &[]), Some(26442.0));
        assert_eq!(get(s, "node_procs_running", &[]), Some(2.0));
        assert_eq!(get(s, "node_procs_blocked", &[]), Some(1.0));
        assert!(s.iter().all(|(l, samples)| l[0].0 == "__name__" && samples.len() == 1 && samples[0].t == 42));
    }

    #[test]
    fn parses_meminfo_loadavg_vmstat_and_pressure() {
        let meminfo = "MemTotal:       15666184 kB\nMemFree:         1210372 kB\nMemAvailable:    9567312 kB\n\
                       Buffers:          388348 kB\nCached:          7806204 kB\nSwapTotal:       2097148 kB\n\
                       SwapFree:        2097148 kB\nActive(anon):    4081340 kB\nHugePages_Total:       0\n\
                       Hugepagesize:       2048 kB\n";
        let mut out = out();
        super::meminfo(meminfo, &mut out);
        super::loadavg("0.21 0.37 0.39 1/719 19737\n", &mut out);
        super::vmstat(
            "nr_free_pages 302593\npgpgin 7344136\npgpgout 1541180581\npswpin 1476\npgfault 2320168809\n\
                       pgmajfault 507162\npgsteal_kswapd 0\noom_kill 0\n",
            &mut out,
        );
        super::pressure(
            "io",
            "some avg10=0.18 avg60=0.11 avg300=0.10 total=159886802\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            &mut out,
        );
        let s = &out.series;
        assert_eq!(get(s, "node_memory_MemTotal_bytes", &[]), Some(15666184.0 * 1024.0));
        assert_eq!(get(s, "node_memory_MemAvailable_bytes", &[]), Some(9567312.0 * 1024.0));
        assert_eq!(get(s, "node_memory_SwapFree_bytes", &[]), Some(2097148.0 * 1024.0));
        assert_eq!(get(s, "node_memory_Active_anon_bytes", &[]), Some(4081340.0 * 1024.0));
        assert_eq!(get(s, "node_memory_HugePages_Total", &[]), Some(0.0));
        assert_eq!(get(s, "node_memory_Hugepagesize_bytes", &[]), Some(2097152.0));
        assert_eq!(count(s, "node_memory_Cached_bytes") + count(s, "node_memory_Buffers_bytes"), 2);
        assert_eq!(get(s, "node_load1", &[]), Some(0.21));
        assert_eq!(get(s, "node_load5", &[]), Some(0.37));
        assert_eq!(get(s, "node_load15", &[]), Some(0.39));
        assert_eq!(get(s, "node_vmstat_pgpgin", &[]), Some(7344136.0));
        assert_eq!(get(s, "node_vmstat_pgmajfault", &[]), Some(507162.0));
        assert_eq!(get(s, "node_vmstat_oom_kill", &[]), Some(0.0));
        assert_eq!(count(s, "node_vmstat_nr_free_pages") + count(s, "node_vmstat_pgsteal_kswapd"), 0);
        assert_eq!(get(s, "node_pressure_io_waiting_seconds_total", &[]), Some(159.886802));
        assert_eq!(get(s, "node_pressure_io_stalled_seconds_total", &[]), Some(0.0));
    }

    #[test]
    fn parses_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
                    face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                    lo: 13401543100  987110    0    0    0     0          0         0 13401543100  987110    0    0    0     0       0          0\n  \
                    eth0: 854597008   51585    3    4    5     6          7         8  2968170   28984    9   10   11    12      13         14\n";
        let mut out = out();
        super::net_dev(text, &mut out);
        let s = &out.series;
        assert_eq!(s.len(), 32);
        let eth0 = [("device", "eth0")];
        assert_eq!(get(s, "node_network_receive_bytes_total", &[("device", "lo")]), Some(13401543100.0));
        assert_eq!(get(s, "node_network_receive_bytes_total", &eth0), Some(854597008.0));
        assert_eq!(get(s, "node_network_receive_packets_total", &eth0), Some(51585.0));
        assert_eq!(get(s, "node_network_receive_errs_total", &eth0), Some(3.0));
        assert_eq!(get(s, "node_network_receive_drop_total", &eth0), Some(4.0));
        assert_eq!(get(s, "node_network_receive_multicast_total", &eth0), Some(8.0));
        assert_eq!(get(s, "node_network_transmit_bytes_total", &eth0), Some(2968170.0));
        assert_eq!(get(s, "node_network_transmit_packets_total", &eth0), Some(28984.0));
        assert_eq!(get(s, "node_network_transmit_errs_total", &eth0), Some(9.0));
        assert_eq!(get(s, "node_network_transmit_drop_total", &eth0), Some(10.0));
        assert_eq!(get(s, "node_network_transmit_colls_total", &eth0), Some(12.0));
        assert_eq!(get(s, "node_network_transmit_compressed_total", &eth0), Some(14.0));
    }

    #[test]
    fn parses_diskstats() {
        let text = "   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n \
                    254       0 vda 3666008 94717 311630410 6841731 949566 354532 304457760 977431 2 344112 7857623 129126 58 185458080 28361 251721 10099\n \
                    254       1 vda1 3665000 94000 311600000 6841000 949000 354000 304450000 977000 0 344000 7857000 0 0 0 0 0 0\n   \
                    8       0 sda 100 2 200 30 40 5 600 70 0 80 90\n \
                    253       0 zram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n \
                    259       0 nvme0n1 1 0 8 0 0 0 0 0 0 0 0\n \
                    259       1 nvme0n1p1 1 0 8 0 0 0 0 0 0 0 0\n \
                    179       1 mmcblk0p1 1 0 8 0 0 0 0 0 0 0 0\n \
                    253       1 dm-0 1 0 8 0 0 0 0 0 0 0 0\n";
        let mut out = out();
        super::diskstats(text, &mut out);
        let s = &out.series;
        let vda = [("device", "vda")];
        assert_eq!(get(s, "node_disk_reads_completed_total", &vda), Some(3666008.0));
        assert_eq!(get(s, "node_disk_reads_merged_total", &vda), Some(94717.0));
        assert_eq!(get(s, "node_disk_read_bytes_total", &vda), Some(311630410.0 * 512.0));
        assert_eq!(get(s, "node_disk_read_time_seconds_total", &vda), Some(6841.731));
        assert_eq!(get(s, "node_disk_writes_completed_total", &vda), Some(949566.0));
        assert_eq!(get(s, "node_disk_written_bytes_total", &vda), Some(304457760.0 * 512.0));
        assert_eq!(get(s, "node_disk_io_now", &vda), Some(2.0));
        assert_eq!(get(s, "node_disk_io_time_seconds_total", &vda), Some(344.112));
        assert_eq!(get(s, "node_disk_io_time_weighted_seconds_total", &vda), Some(7857.623));
        assert_eq!(get(s, "node_disk_discarded_sectors_total", &vda), Some(185458080.0));
        assert_eq!(get(s, "node_disk_flush_requests_time_seconds_total", &vda), Some(10.099));
        // An older kernel's 11 fields give 11 metrics.
        assert_eq!(s.iter().filter(|(l, _)| l.iter().any(|(_, v)| v == "sda")).count(), 11);
        let mut devices: Vec<&str> =
            s.iter().flat_map(|(l, _)| l.iter().filter(|(n, _)| n == "device").map(|(_, v)| v.as_str())).collect();
        devices.sort_unstable();
        devices.dedup();
        assert_eq!(devices, ["dm-0", "mmcblk0p1", "nvme0n1", "sda", "vda"]);
    }

    #[test]
    fn disk_exclusion_matches_node_exporter() {
        for excluded in ["loop0", "ram15", "zram0", "fd0", "sda1", "hdb2", "vda10", "xvdf1", "nvme0n1p1", "nvme10n2p3"]
        {
            assert!(super::disk_excluded(excluded), "{excluded}");
        }
        for kept in ["sda", "vda", "xvdf", "nvme0n1", "dm-0", "md0", "mmcblk0", "mmcblk0p1", "sdaa1", "sr0", "loop"] {
            assert!(!super::disk_excluded(kept), "{kept}");
        }
    }

    #[test]
    fn reports_real_filesystems_only() {
        let text = "proc /proc proc rw,relatime 0 0\n\
                    sysfs /sys sysfs rw,relatime 0 0\n\
                    /dev/vda / ext4 rw,relatime,discard 0 0\n\
                    /dev/vda / ext4 rw,relatime,discard 0 0\n\
                    tmpfs /dev/shm tmpfs rw,relatime 0 0\n\
                    tmpfs /run tmpfs rw,nosuid,size=3201124k,mode=755 0 0\n\
                    cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n\
                    cgroup /cg cgroup rw 0 0\n\
                    overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0\n\
                    /dev/sdb1 /var/lib/docker ext4 rw 0 0\n\
                    /dev/sdb1 /var/lib/docker/volumes/x ext4 rw 0 0\n\
                    /dev/sdc1 /mnt/my\\040disk xfs ro,noatime 0 0\n\
                    server:/export /mnt/nfs nfs4 rw 0 0\n";
        let mounts = super::mounts(text);
        let points: Vec<&str> = mounts.iter().map(|m| m.mount_point.as_str()).collect();
        assert_eq!(points, ["/", "/run", "/var/lib/docker", "/mnt/my disk", "/mnt/nfs"]);
        assert!(mounts[3].read_only && !mounts[0].read_only);

        let mut out = out();
        let mut asked = Vec::new();
        super::filesystems(text, &mut out, |mount_point, fs_type| {
            asked.push((mount_point.to_owned(), fs_type.to_owned()));
            (fs_type != "nfs4").then_some(FsStats {
                size_bytes: 1000.0,
                free_bytes: 600.0,
                avail_bytes: 500.0,
                files: 100.0,
                files_free: 90.0,
            })
        });
        assert_eq!(asked.len(), 5);
        let s = &out.series;
        let root = [("device", "/dev/vda"), ("fstype", "ext4"), ("mountpoint", "/")];
        assert_eq!(get(s, "node_filesystem_size_bytes", &root), Some(1000.0));
        assert_eq!(get(s, "node_filesystem_free_bytes", &root), Some(600.0));
        assert_eq!(get(s, "node_filesystem_avail_bytes", &root), Some(500.0));
        assert_eq!(get(s, "node_filesystem_files", &root), Some(100.0));
        assert_eq!(get(s, "node_filesystem_files_free", &root), Some(90.0));
        assert_eq!(get(s, "node_filesystem_device_error", &root), Some(0.0));
        let disk = [("device", "/dev/sdc1"), ("fstype", "xfs"), ("mountpoint", "/mnt/my disk")];
        assert_eq!(get(s, "node_filesystem_readonly", &disk), Some(1.0));
        let nfs = [("device", "server:/export"), ("fstype", "nfs4"), ("mountpoint", "/mnt/nfs")];
        assert_eq!(get(s, "node_filesystem_device_error", &nfs), Some(1.0));
        assert_eq!(get(s, "node_filesystem_size_bytes", &nfs), None);
    }

    #[test]
    fn network_counters_come_from_pid_1_and_sizes_through_the_host_root() {
        let root = tempfile::tempdir().unwrap();
        let proc_root = root.path().join("proc");
        std::fs::create_dir_all(proc_root.join("1/net")).unwrap();
        std::fs::create_dir_all(proc_root.join("net")).unwrap();
        let head = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";
        std::fs::write(proc_root.join("1/net/dev"), format!("{head}  eth0: 100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n"))
            .unwrap();
        std::fs::write(proc_root.join("net/dev"), format!("{head}    lo: 5 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n")).unwrap();
        let series = super::collect(&proc_root, &root.path().join("sys"), Path::new("/"), 42);
        let devices: Vec<&str> = series
            .iter()
            .filter(|(l, _)| l[0].1 == "node_network_receive_bytes_total")
            .filter_map(|(l, _)| l.iter().find(|(n, _)| n == "device").map(|(_, v)| v.as_str()))
            .collect();
        assert_eq!(devices, ["eth0"], "the host's (PID 1's) namespace, not the reader's");
        assert_eq!(super::under_root(Path::new("/host/root"), "/mnt/data"), "/host/root/mnt/data");
        assert_eq!(super::under_root(Path::new("/host/root"), "/"), "/host/root/");
        assert_eq!(super::under_root(Path::new("/"), "/mnt/data"), "/mnt/data");
    }

    #[test]
    fn missing_files_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        let proc_root = root.path().join("proc");
        std::fs::create_dir_all(proc_root.join("sys/kernel")).unwrap();
        std::fs::write(proc_root.join("loadavg"), "1.5 1.0 0.5 2/300 1234\n").unwrap();
        std::fs::write(proc_root.join("sys/kernel/ostype"), "Linux\n").unwrap();
        std::fs::write(proc_root.join("sys/kernel/hostname"), "node-7\n").unwrap();
        let series = super::collect(&proc_root, &root.path().join("sys"), Path::new("/"), 42);
        let mut names: Vec<&str> = series.iter().map(|(l, _)| l[0].1.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["node_load1", "node_load15", "node_load5", "node_time_seconds", "node_uname_info"]);
        let uname = series.iter().find(|(l, _)| l[0].1 == "node_uname_info").unwrap();
        let label = |name: &str| uname.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(label("sysname"), Some("Linux"));
        assert_eq!(label("nodename"), Some("node-7"));
        // Missing files fall back to the uname call.
        assert!(label("release").is_some_and(|r| !r.is_empty()));
    }

    #[test]
    fn collects_this_machine() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let t_ms = (now * 1000.0) as i64;
        let series = super::collect(Path::new("/proc"), Path::new("/sys"), Path::new("/"), t_ms);
        for (labels, samples) in &series {
            assert_eq!(labels[0].0, "__name__", "{labels:?}");
            assert!(labels.windows(2).all(|w| w[0].0 < w[1].0), "{labels:?}");
            assert_eq!(samples.len(), 1);
            assert_eq!(samples[0].t, t_ms);
            assert!(samples[0].v.is_finite(), "{labels:?} {samples:?}");
        }
        let n_cpus =
            std::fs::read_to_string("/proc/stat").unwrap().lines().filter(|l| l.starts_with("cpu")).count() - 1;
        assert!(n_cpus >= 1);
        assert_eq!(count(&series, "node_cpu_seconds_total"), n_cpus * 8);
        assert!(get(&series, "node_cpu_seconds_total", &[("cpu", "0"), ("mode", "idle")]).unwrap() > 0.0);
        let total = get(&series, "node_memory_MemTotal_bytes", &[]).unwrap();
        let available = get(&series, "node_memory_MemAvailable_bytes", &[]).unwrap();
        assert!(total > 64.0 * 1024.0 * 1024.0 && available > 0.0 && available <= total, "{total} {available}");
        assert!(get(&series, "node_memory_SwapTotal_bytes", &[]).is_some());
        assert!(get(&series, "node_load1", &[]).unwrap() >= 0.0);
        let boot = get(&series, "node_boot_time_seconds", &[]).unwrap();
        assert!(boot > 1e9 && boot < now, "{boot}");
        let time = get(&series, "node_time_seconds", &[]).unwrap();
        assert!((time - now).abs() < 60.0, "{time} {now}");
        assert!(get(&series, "node_context_switches_total", &[]).unwrap() > 0.0);
        assert!(get(&series, "node_intr_total", &[]).is_some());
        assert!(get(&series, "node_procs_running", &[]).unwrap() >= 1.0);
        assert!(get(&series, "node_network_receive_bytes_total", &[("device", "lo")]).is_some());
        assert!(get(&series, "node_network_transmit_packets_total", &[("device", "lo")]).is_some());
        assert_eq!(count(&series, "node_uname_info"), 1);
        let uname = series.iter().find(|(l, _)| l[0].1 == "node_uname_info").unwrap();
        assert!(uname.0.contains(&("sysname".to_owned(), "Linux".to_owned())), "{:?}", uname.0);
        assert!(uname.0.iter().any(|(n, v)| n == "release" && !v.is_empty()));

        // Every file system node_exporter would report is here and sized, and no pseudo file system is.
        let mounts_text =
            std::fs::read_to_string("/proc/1/mounts").or_else(|_| std::fs::read_to_string("/proc/mounts")).unwrap();
        for mount in super::mounts(&mounts_text) {
            let labels = [
                ("device", mount.device.as_str()),
                ("fstype", mount.fs_type.as_str()),
                ("mountpoint", mount.mount_point.as_str()),
            ];
            if get(&series, "node_filesystem_device_error", &labels) == Some(0.0) {
                let size = get(&series, "node_filesystem_size_bytes", &labels).unwrap();
                let avail = get(&series, "node_filesystem_avail_bytes", &labels).unwrap();
                assert!(avail <= size, "{labels:?}");
            }
        }
        for (labels, _) in &series {
            if labels[0].1.starts_with("node_filesystem_") {
                let fstype = &labels.iter().find(|(n, _)| n == "fstype").unwrap().1;
                assert!(!["proc", "sysfs", "cgroup", "cgroup2", "devpts", "overlay"].contains(&fstype.as_str()));
            }
        }
        if mounts_text.lines().any(|l| l.split_whitespace().nth(1) == Some("/") && l.contains(" ext4 ")) {
            let root = series
                .iter()
                .find(|(l, _)| {
                    l[0].1 == "node_filesystem_size_bytes" && l.iter().any(|(n, v)| n == "mountpoint" && v == "/")
                })
                .unwrap();
            assert!(root.1[0].v > 0.0);
        }
    }
}
