//! The `[store]` section of the configuration: engine tuning, each key with a default that suits a small
//! server. The data directory and retention come from `[server]`, as the flags name them.

use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// Engine tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Flush the in-memory head to Parquet once it holds this much Arrow data. Left at its default, the
    /// server takes `min(16 MiB, 10% of server.memory_limit / 3)` (a head holds up to 3 times this).
    pub head_max_size: ByteSize,
    /// Flush the head at the latest this long after its first write.
    #[serde(with = "duration")]
    pub head_max_age: Duration,
    /// Start a new write-ahead-log segment past this size.
    pub wal_segment_size: ByteSize,
    /// Rows per Parquet row group: the unit of the time and token indexes. Left at its default, the server
    /// takes `min(65536, server.memory_limit / 8 KiB)`: a flush encodes a row group at a time.
    pub row_group_rows: usize,
    /// zstd level of Parquet pages written by flushes (1 fastest .. 22 smallest).
    pub zstd_level: i32,
    /// zstd level of pages written by compaction, which runs in the background and once per row.
    pub compaction_zstd_level: i32,
    /// Bits per distinct token in the full-text token filters (10 gives about 1% false positives).
    pub token_filter_bits: u32,
    /// Put tokens made only of digits into the token filters too.
    pub index_numbers: bool,
    /// Merge the current day's parts of one level (flushed, merged once, ...) once it has this many; a
    /// day that is over merges all its parts.
    pub compaction_min_parts: usize,
    /// Parts at least this large are not merged again.
    pub compaction_max_part_size: ByteSize,
    /// How often compaction and retention look for work.
    #[serde(with = "duration")]
    pub maintenance_interval: Duration,
    /// Most field columns a log part has: a flush whose entries carry more distinct field names writes
    /// several parts, and compaction does not merge past it. At least 1000 (the fields of one entry).
    pub max_field_columns: usize,
    /// Most log streams one tenant may have; a write that would add more is refused whole (429). 0: no limit.
    pub max_streams_per_tenant: usize,
    /// Most metric series one tenant may have; samples of further new series are left out, counted and
    /// named in the answer. 0: no limit.
    pub max_series_per_tenant: usize,
    /// How long a delete request can be cancelled; after it, the next maintenance rewrites the parts it
    /// covers. Its rows are hidden from reads at once either way.
    #[serde(with = "duration")]
    pub delete_cancel_period: Duration,
    /// Free space below which ingest is refused until space returns (`auto`: the smaller of 1 GiB and
    /// 5 % of the volume; `0 B`: no reserve).
    pub min_free_disk: DiskReserve,
    /// The most everything the store keeps may take on disk (log and metric parts, catalogs, both
    /// write-ahead logs); past it the oldest data is deleted. `0 B`: no budget.
    pub retention_max_disk: ByteSize,
    /// Metric samples kept decoded in memory for the next query (each series' run of a part, least
    /// recently used out first): dashboards read the same series at every refresh. `0 B`: off. Left at its
    /// default, the server takes `min(64 MiB, 5% of server.memory_limit)`.
    pub decoded_cache_max_bytes: ByteSize,
    /// Answers of log scans from parts kept in memory for the next query (per part: the rows a search,
    /// selector and time range matched, least recently used out first): a dashboard's log panels ask the
    /// same of the same parts at every refresh. `0 B`: off. Left at its default, the server takes
    /// `min(16 MiB, 2% of server.memory_limit)`.
    pub scan_cache_max_bytes: ByteSize,
    /// Pages of log parts kept decoded in memory for the next read of the same rows, whatever it searches
    /// for (least recently used out first); a read that would decode more than half of it, or that reads
    /// no lines, takes what is there and keeps nothing. `0 B`: off. Left at its default, the server takes
    /// `min(64 MiB, 5% of server.memory_limit)`.
    pub log_page_cache_max_bytes: ByteSize,
}

/// A size that may be left to the server to work out: `"auto"` or a size (`store.min_free_disk`,
/// `server.memory_limit`); each key's docs say what `auto` means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoSize {
    /// Worked out by the server from the machine (see the key).
    #[default]
    Auto,
    Bytes(ByteSize),
}

/// `store.min_free_disk`: `auto` is the smaller of 1 GiB and 5 % of the volume.
pub type DiskReserve = AutoSize;

impl AutoSize {
    /// The configured size, `None` for the volume-dependent default.
    pub fn bytes(self) -> Option<ByteSize> {
        match self {
            AutoSize::Auto => None,
            AutoSize::Bytes(b) => Some(b),
        }
    }
}

impl Serialize for AutoSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AutoSize::Auto => s.serialize_str("auto"),
            AutoSize::Bytes(b) => b.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for AutoSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Bytes(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(AutoSize::Bytes(ByteSize::b(n))),
            Raw::Text(t) if t.trim().eq_ignore_ascii_case("auto") => Ok(AutoSize::Auto),
            Raw::Text(t) => t.parse::<ByteSize>().map(AutoSize::Bytes).map_err(|e| {
                serde::de::Error::custom(format!("{t:?} is neither \"auto\" nor a size like \"512MiB\" ({e})"))
            }),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            head_max_size: ByteSize::mib(16),
            head_max_age: Duration::from_secs(60),
            wal_segment_size: ByteSize::mib(64),
            row_group_rows: 65_536,
            zstd_level: 3,
            compaction_zstd_level: 9,
            token_filter_bits: 10,
            index_numbers: false,
            compaction_min_parts: 4,
            compaction_max_part_size: ByteSize::gib(1),
            maintenance_interval: Duration::from_secs(30),
            max_field_columns: 2000,
            max_streams_per_tenant: 10_000,
            max_series_per_tenant: 500_000,
            delete_cancel_period: Duration::from_secs(300),
            min_free_disk: DiskReserve::Auto,
            retention_max_disk: ByteSize::b(0),
            decoded_cache_max_bytes: ByteSize::mib(64),
            scan_cache_max_bytes: ByteSize::mib(16),
            log_page_cache_max_bytes: ByteSize::mib(64),
        }
    }
}

impl StoreConfig {
    /// Checks that the values can work.
    ///
    /// # Errors
    /// A message naming the key and what it needs.
    pub fn validate(&self) -> Result<(), String> {
        if self.row_group_rows < 1024 {
            return Err(format!("store.row_group_rows = {} is below the minimum of 1024", self.row_group_rows));
        }
        if !(1..=22).contains(&self.zstd_level) || !(1..=22).contains(&self.compaction_zstd_level) {
            return Err("store.zstd_level and store.compaction_zstd_level must be within 1..=22".to_string());
        }
        if !(4..=64).contains(&self.token_filter_bits) {
            return Err(format!("store.token_filter_bits = {} must be within 4..=64", self.token_filter_bits));
        }
        if self.compaction_min_parts < 2 {
            return Err("store.compaction_min_parts must be at least 2".to_string());
        }
        if self.max_field_columns < crate::model::MAX_FIELDS_PER_ENTRY {
            return Err(format!(
                "store.max_field_columns = {} is below {}, the fields one entry may carry",
                self.max_field_columns,
                crate::model::MAX_FIELDS_PER_ENTRY
            ));
        }
        if self.head_max_size.as_u64() < 1024 * 1024 {
            return Err("store.head_max_size must be at least 1MiB".to_string());
        }
        Ok(())
    }
}

/// Options fixed by the server for one store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub data_dir: std::path::PathBuf,
    /// Delete days older than this.
    pub retention: Duration,
    /// The free-space reserve and the disk budget of the data directory, shared by both stores; `None`
    /// (tests, tools) for neither.
    pub disk: Option<crate::disk::DiskGuard>,
    /// Retention per tenant and per stream selector (`[[retention.rule]]`), over the global period.
    pub retention_rules: Vec<RetentionRule>,
    pub tuning: StoreConfig,
}

/// Serde for durations written as `"30s"`, `"5m"`, `"30d"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {s:?} ({e}); write e.g. \"30s\", \"5m\", \"30d\""))
        })
    }
}

/// A retention rule: a tenant's data, or only the streams (series) matching `matchers`, is kept for
/// `period` instead of the global retention. A rule without matchers sets the tenant's period (longer or
/// shorter); a rule with matchers shortens it for what they match.
#[derive(Debug, Clone)]
pub struct RetentionRule {
    pub tenant: String,
    pub matchers: Vec<crate::scan::LabelMatcher>,
    pub period: Duration,
    /// The selector as configured, for messages.
    pub selector: String,
}
