//! The systemd journal, read natively: the agent reads the journal files under `agent.journal_dirs`
//! itself (no `journalctl`, no libsystemd), turns each entry into a log line and cuts batches into the
//! disk buffer beside the pod logs, with the same delivery guarantees.
//!
//! # Files
//! [`file`] reads one journal file: the header, the entry-array chain (the file's entries in the order
//! journald wrote them), entry objects and their `FIELD=value` data objects, in the regular layout and in
//! systemd 252's compact one, uncompressed, zstd or LZ4. XZ-compressed fields (files of old systemd
//! versions that compressed with XZ) are not decoded: they count as unreadable fields (see below).
//!
//! [`reader`] is the reader thread. It lists every `journal_dirs` entry and its subdirectories
//! (`/var/log/journal/<machine-id>/`) for `*.journal` files: the active `system.journal` and
//! `user-<uid>.journal`, and archived `system@….journal` ones. `*.journal~` files (journald's name for a
//! file it found corrupt or unclean) are skipped and counted. A missing directory is fine (most hosts
//! have only one of `/var/log/journal` and `/run/log/journal`); an unreadable one is warned about once.
//!
//! # Positions
//! A file is known by the xxh3 hash of its 128-bit file id, which a rotation (the rename of
//! `system.journal` to `system@….journal`) keeps, and its position is the number of entries consumed in
//! entry-array order. Both go into the disk buffer's batch positions and, once the server acknowledges the
//! batch, into the checkpoints, exactly as for pod log files ([`crate::checkpoint`]): after a restart or a
//! `kill -9` the reader resumes at the furthest buffered position, else at the checkpoint.
//!
//! A file with no position is read from its start if the agent has read a file of the same directory
//! before (a new `system.journal` after a rotation). Otherwise (the agent's first start on this host)
//! only its entries newer than `journal_max_age` (default 7h, as Promtail's `max_age`) are read, and the
//! older ones are passed over as if read, so that the next start does not read them either.
//!
//! A file journald still writes (state ONLINE) is read up to what its header counts, re-read every round,
//! and never past `header_size + arena_size` or the file's length. An entry it lists whose objects do not
//! read yet is retried for a few seconds before it is given up as corrupt. An archived file, or a renamed
//! or deleted one that stopped growing, is read to its end and closed.
//!
//! # Bad files
//! A truncated, zeroed or corrupt file never stops the reader: what cannot be read is counted in
//! `lumen_agent_journal_errors_total{reason}` and warned about at most once a minute per reason. An entry
//! whose object is broken is skipped (in a file not being written), a field whose data object is broken
//! or XZ-compressed is left out and counted in the line's `unreadable_fields` field, and a broken
//! entry-array chain ends the file there.
//!
//! # The mapping
//! | Lumen | from the journal entry |
//! |---|---|
//! | label `node` | the agent's node name |
//! | label `unit` | `_SYSTEMD_UNIT` (no label when absent: kernel messages, some user processes) |
//! | label `app_name` | `SYSLOG_IDENTIFIER`, else `_COMM`, else `unknown` |
//! | label `level` | `PRIORITY` in syslog's words ([`level`]: 0–2 `critical`, 3 `error`, 4 `warn`, 5–6 `info`, 7 `debug`, as the server's syslog ingest); no label without a valid `PRIORITY` |
//! | field `severity` | `PRIORITY`'s keyword ([`severity_name`]: `emerg` … `debug`) |
//! | field `pid` | `_PID` |
//! | field `hostname` | `_HOSTNAME` |
//! | field `boot_id` | the entry's boot id (`_BOOT_ID`), 32 hex digits |
//! | field `transport` | `_TRANSPORT` (`journal`, `stdout`, `syslog`, `kernel`, `audit`, `driver`) |
//! | other fields | each `journal_fields` name present in the entry, named in lower case without leading underscores and made a valid name (`_CMDLINE` → `cmdline`, `CODE_FILE` → `code_file`); a name that collides with one above is left out |
//! | line | `MESSAGE`, as UTF-8 (invalid sequences replaced); a `MESSAGE` that is not valid UTF-8 or holds a NUL byte adds `message_binary="true"`; an entry without `MESSAGE` has an empty line |
//! | time | the entry's realtime (`__REALTIME_TIMESTAMP`, µs) |
//!
//! A `MESSAGE` longer than `max_line_size` is cut there and the line gets `truncated="true"`.
//! `journal_units` (globs; empty means every entry) and `journal_exclude_units` (globs) select entries by
//! `_SYSTEMD_UNIT`; with `journal_units` set, entries without a unit are left out. Left-out entries still
//! move the file's position.
//!
//! Known limit: early in a boot, journald copies what it wrote to `/run/log/journal` into
//! `/var/log/journal` (`systemd-journal-flush`). An agent that reads both directories before that copy
//! ships those entries twice; one that starts after it (the usual case for a DaemonSet) does not.

pub mod file;
pub mod reader;

use globset::{Glob, GlobSet, GlobSetBuilder};

pub use reader::{JournalReader, JournalSettings};

use crate::journal::file::Entry;

/// The `level` label of a syslog severity (the journal's `PRIORITY`): the words of the server's syslog
/// ingest (`ingest_syslog::parse::level`; the integration tests hold the two tables equal).
pub fn level(priority: u8) -> &'static str {
    match priority {
        0..=2 => "critical",
        3 => "error",
        4 => "warn",
        5 | 6 => "info",
        _ => "debug",
    }
}

/// The RFC 5424 keyword of a severity (the `severity` field), as the syslog ingest spells it.
pub fn severity_name(priority: u8) -> &'static str {
    const NAMES: [&str; 8] = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"];
    NAMES.get(usize::from(priority)).copied().unwrap_or("unknown")
}

/// The field name a `journal_fields` entry is kept under: lower case, leading underscores dropped, made
/// a valid label name.
pub fn field_name(journal_name: &str) -> String {
    let lower = journal_name.trim_start_matches('_').to_ascii_lowercase();
    store::model::sanitize_label_name(&lower)
}

/// A journal option that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum JournalConfigError {
    #[error("invalid glob {glob:?} in agent.{key}: {source}")]
    Glob {
        key: &'static str,
        glob: String,
        #[source]
        source: globset::Error,
    },
    #[error(
        "agent.journal_fields: {name:?} is not a journal field name (upper-case letters, digits and _, not \
         starting with a digit, as `journalctl -o verbose` prints them)"
    )]
    FieldName { name: String },
}

/// Built-in field names, which an allow-listed field may not take.
const BUILTIN_FIELDS: [&str; 8] =
    ["pid", "hostname", "severity", "boot_id", "transport", "truncated", "message_binary", "unreadable_fields"];

/// How entries become log lines: the stream labels, fields and unit filters.
#[derive(Debug, Clone)]
pub struct Mapping {
    node: String,
    include_units: Option<GlobSet>,
    exclude_units: Option<GlobSet>,
    /// Allow-listed journal fields: (journal name, field name).
    fields: Vec<(Vec<u8>, String)>,
    max_line_bytes: usize,
}

/// One entry as a log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// The stream's label set as Loki writes it: `{app_name="sshd", level="info", node="n1", unit="ssh.service"}`.
    pub labels: String,
    pub time_ns: i64,
    pub line: String,
    pub fields: Vec<(String, String)>,
}

impl Mapping {
    /// # Errors
    /// A unit glob that does not compile, or a `journal_fields` name that is not a journal field name.
    pub fn new(
        node: String,
        units: &[String],
        exclude_units: &[String],
        journal_fields: &[String],
        max_line_bytes: usize,
    ) -> Result<Mapping, JournalConfigError> {
        let mut fields: Vec<(Vec<u8>, String)> = Vec::new();
        for name in journal_fields {
            let valid = !name.is_empty()
                && !name.as_bytes()[0].is_ascii_digit()
                && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(JournalConfigError::FieldName { name: name.clone() });
            }
            let out = field_name(name);
            if !BUILTIN_FIELDS.contains(&out.as_str()) && !fields.iter().any(|(_, o)| *o == out) {
                fields.push((name.as_bytes().to_vec(), out));
            }
        }
        Ok(Mapping {
            node,
            include_units: globs("journal_units", units)?,
            exclude_units: globs("journal_exclude_units", exclude_units)?,
            fields,
            max_line_bytes,
        })
    }

    /// The entry as a log line, or `None` when the unit filters leave it out.
    pub fn map(&self, e: &Entry) -> Option<Mapped> {
        let text = |name: &[u8]| e.get(name).map(|f| String::from_utf8_lossy(f.value()).into_owned());
        let unit = text(b"_SYSTEMD_UNIT").filter(|u| !u.is_empty());
        let unit_str = unit.as_deref().unwrap_or("");
        if let Some(include) = &self.include_units
            && (unit.is_none() || !include.is_match(unit_str))
        {
            return None;
        }
        if unit.is_some() && self.exclude_units.as_ref().is_some_and(|x| x.is_match(unit_str)) {
            return None;
        }
        let app_name = text(b"SYSLOG_IDENTIFIER")
            .filter(|s| !s.is_empty())
            .or_else(|| text(b"_COMM").filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "unknown".to_string());
        let priority = e.get(b"PRIORITY").and_then(|f| match f.value() {
            [d @ b'0'..=b'7'] => Some(d - b'0'),
            _ => None,
        });
        let mut pairs: Vec<(&str, &str)> = vec![("node", &self.node), ("app_name", &app_name)];
        if let Some(u) = &unit {
            pairs.push(("unit", u));
        }
        if let Some(p) = priority {
            pairs.push(("level", level(p)));
        }
        let labels = crate::tail::label_set(pairs);

        let mut fields: Vec<(String, String)> = Vec::with_capacity(8);
        for (name, out) in [(&b"_PID"[..], "pid"), (b"_HOSTNAME", "hostname"), (b"_TRANSPORT", "transport")] {
            if let Some(v) = text(name).filter(|v| !v.is_empty()) {
                fields.push((out.to_string(), v));
            }
        }
        if let Some(p) = priority {
            fields.push(("severity".to_string(), severity_name(p).to_string()));
        }
        fields.push(("boot_id".to_string(), file::hex_id(&e.boot_id)));
        for (name, out) in &self.fields {
            if let Some(v) = text(name) {
                fields.push((out.clone(), v));
            }
        }

        let (mut line, mut truncated, binary) = match e.get(b"MESSAGE") {
            Some(f) => {
                let v = f.value();
                let binary = memchr::memchr(0, v).is_some();
                match std::str::from_utf8(v) {
                    Ok(s) => (s.to_string(), f.truncated, binary),
                    Err(_) => (String::from_utf8_lossy(v).into_owned(), f.truncated, true),
                }
            }
            None => (String::new(), false, false),
        };
        if line.len() > self.max_line_bytes {
            let mut cut = self.max_line_bytes;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            truncated = true;
        }
        if truncated {
            fields.push(("truncated".to_string(), "true".to_string()));
        }
        if binary {
            fields.push(("message_binary".to_string(), "true".to_string()));
        }
        if e.unreadable > 0 {
            fields.push(("unreadable_fields".to_string(), e.unreadable.to_string()));
        }
        let time_ns = match i64::try_from(e.realtime_us) {
            Ok(us) if us > 0 => us.saturating_mul(1000),
            _ => store::time::now_ns(),
        };
        Some(Mapped { labels, time_ns, line, fields })
    }
}

fn globs(key: &'static str, list: &[String]) -> Result<Option<GlobSet>, JournalConfigError> {
    if list.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for g in list {
        b.add(Glob::new(g).map_err(|source| JournalConfigError::Glob { key, glob: g.clone(), source })?);
    }
    b.build().map(Some).map_err(|source| JournalConfigError::Glob { key, glob: list.join(", "), source })
}

#[cfg(test)]
mod tests;
