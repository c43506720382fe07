//! The ruler: recording and alerting rules over PromQL and LogQL, evaluated in the server with
//! Prometheus 3's semantics, their output written into Lumen's own metric store, alerts sent to
//! Alertmanager or straight to a webhook or chat, and the APIs Grafana and the rule tools call.
//!
//! - [`rulefmt`]: the rule file format and its checks (`lumen rules check`).
//! - [`rule`]: one rule's state and the alert state machine; [`group`]: one evaluation cycle, stale
//!   markers, `for` restore; [`backend`]: the stores behind them.
//! - [`manager`]: loading every source, one task per group, reload; [`notify`]: notifications;
//!   [`remote_write`]: the rules' samples also sent to remote-write receivers;
//!   [`api`]: HTTP; [`unittest`]: promtool's rule unit tests (`lumen rules test`).

pub mod api;
pub mod backend;
pub mod config;
pub mod group;
pub mod manager;
pub mod notify;
pub mod remote_write;
pub mod rule;
pub mod rulefmt;
pub mod unittest;

pub use config::{NotifierConfig, NotifierKind, RulerConfig};
pub use manager::{Ruler, RulerMetrics};

use std::fmt::Write as _;
use std::path::PathBuf;

/// `lumen rules check`: checks rule files as `promtool check rules` does, writing its report to `out`.
/// True when every file is valid.
pub fn check_files(files: &[PathBuf], lang: rulefmt::Lang, out: &mut String) -> bool {
    let mut ok = true;
    for f in files {
        let _ = writeln!(out, "Checking {}", f.display());
        let res = std::fs::read_to_string(f).map_err(|e| vec![e.to_string()]).and_then(|text| {
            rulefmt::parse_file(&f.display().to_string(), &text, lang, &rulefmt::Defaults::default())
                .map_err(|es| es.iter().map(ToString::to_string).collect())
        });
        match res {
            Ok(groups) => {
                let n: usize = groups.iter().map(|g| g.rules.len()).sum();
                let _ = writeln!(out, "  SUCCESS: {n} rules found\n");
            }
            Err(es) => {
                ok = false;
                let _ = writeln!(out, "  FAILED:");
                for e in es {
                    let _ = writeln!(out, "{e}");
                }
                let _ = writeln!(out);
            }
        }
    }
    ok
}

/// `lumen rules test`: runs promtool-format rule unit tests, writing the report to `out`. True when every
/// test passed.
pub fn test_files(files: &[PathBuf], out: &mut String) -> bool {
    let mut ok = true;
    for f in files {
        match unittest::run_file(f, out) {
            Ok(true) => {}
            Ok(false) => ok = false,
            Err(e) => {
                ok = false;
                let _ = writeln!(out, "  FAILED:\n    {e}");
            }
        }
        let _ = writeln!(out);
    }
    ok
}
