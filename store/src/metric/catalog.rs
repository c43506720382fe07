//! The series catalog: per tenant, dense `u32` series ids assigned in arrival order, the labels of each,
//! a hash index from labels to id, and postings — one roaring bitmap per label pair and per label name —
//! that turn matchers into the set of series a query reads without looking at the others.
//!
//! New series are registered in memory at once; the WAL record that first carries a series also carries
//! its labels (every record does until one of them is durable, see [`SeriesEntry::logged`]), and at each
//! flush the new series are appended to `metrics/tenant=<t>/series.bin` before the manifest names parts
//! that use their ids. At start-up the file is read and the postings rebuilt in memory.
//!
//! Ids are never given twice: a new series gets an id above every id the catalog, the parts and the
//! replayed WAL samples use ([`SeriesCatalog::check_parts`]), so a series whose labels were lost keeps
//! its samples to itself (unreachable by selectors) instead of lending them to a newcomer. A damaged
//! `series.bin` stops the start unless the operator asks for a salvage (see `crate::catalog`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use roaring::RoaringBitmap;

use crate::catalog::{LabelFile, append_label_records, load_label_file};
use crate::error::Result;
use crate::model::{Labels, Tenant};
use crate::quarantine::Quarantine;
use crate::scan::{LabelMatcher, MatchOp};

/// One series of a tenant.
pub(crate) struct SeriesEntry {
    pub(crate) labels: Arc<Labels>,
    /// True once a durable WAL record (or the series file) holds the labels. Until then every record that
    /// uses the series carries them, so no acknowledged sample can refer to an id whose labels were lost.
    pub(crate) logged: AtomicBool,
}

/// A tenant's series and postings.
#[derive(Default)]
pub(crate) struct TenantSeries {
    /// Indexed by id; `None` for an id assigned by a process that crashed before logging it.
    series: Vec<Option<SeriesEntry>>,
    by_hash: HashMap<u64, Vec<u32>>,
    /// label name → value → series.
    postings: HashMap<String, HashMap<String, RoaringBitmap>>,
    all: RoaringBitmap,
    unpersisted: Vec<u32>,
}

/// The hash of sorted label pairs that keys the series index.
pub(crate) fn labels_hash<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>, scratch: &mut Vec<u8>) -> u64 {
    scratch.clear();
    for (n, v) in pairs {
        scratch.extend_from_slice(n.as_bytes());
        scratch.push(0xff);
        scratch.extend_from_slice(v.as_bytes());
        scratch.push(0xff);
    }
    xxhash_rust::xxh3::xxh3_64(scratch)
}

impl TenantSeries {
    /// The id of the series with these sorted pairs, if known.
    pub(crate) fn lookup(&self, hash: u64, pairs: &[(&str, &str)]) -> Option<(u32, bool)> {
        let ids = self.by_hash.get(&hash)?;
        ids.iter().find_map(|&id| {
            let e = self.series[id as usize].as_ref()?;
            let same = e.labels.len() == pairs.len() && e.labels.iter().zip(pairs).all(|(a, b)| a == *b);
            same.then(|| (id, e.logged.load(Ordering::Acquire)))
        })
    }

    /// Registers a series under a given id (replay, load) or the next free one (`id = None`). `logged`:
    /// a durable WAL record or the series file holds it; `persisted`: the series file does.
    pub(crate) fn insert(&mut self, hash: u64, labels: Labels, id: Option<u32>, logged: bool, persisted: bool) -> u32 {
        let pairs: Vec<(&str, &str)> = labels.iter().collect();
        if let Some((existing, _)) = self.lookup(hash, &pairs) {
            return existing;
        }
        let id = id.unwrap_or(self.series.len() as u32);
        if self.series.len() <= id as usize {
            self.series.resize_with(id as usize + 1, || None);
        }
        if let Some(other) = &self.series[id as usize] {
            // Only a store that once gave one id to two series gets here; the first keeps it.
            tracing::error!(id, kept = %other.labels, dropped = %labels, "two label sets for one series id");
            return id;
        }
        for (n, v) in labels.iter() {
            let by_value = match self.postings.get_mut(n) {
                Some(m) => m,
                None => self.postings.entry(n.to_string()).or_default(),
            };
            match by_value.get_mut(v) {
                Some(b) => {
                    b.insert(id);
                }
                None => {
                    by_value.insert(v.to_string(), RoaringBitmap::from_iter([id]));
                }
            }
        }
        self.all.insert(id);
        self.by_hash.entry(hash).or_default().push(id);
        self.series[id as usize] = Some(SeriesEntry { labels: Arc::new(labels), logged: AtomicBool::new(logged) });
        if !persisted {
            self.unpersisted.push(id);
        }
        id
    }

    /// Makes ids up to `max` taken: the next new series gets a higher one.
    pub(crate) fn reserve_ids(&mut self, max: u32) {
        if self.series.len() <= max as usize {
            self.series.resize_with(max as usize + 1, || None);
        }
    }

    pub(crate) fn entry(&self, id: u32) -> Option<&SeriesEntry> {
        self.series.get(id as usize).and_then(Option::as_ref)
    }

    pub(crate) fn labels(&self, id: u32) -> Option<&Arc<Labels>> {
        self.entry(id).map(|e| &e.labels)
    }

    pub(crate) fn len(&self) -> usize {
        self.all.len() as usize
    }

    /// The series matching every matcher, through the postings: equality matchers intersect one bitmap
    /// each; regex matchers union the bitmaps of the values they accept; negative matchers subtract.
    /// Matchers that accept the empty value also accept series without the label.
    pub(crate) fn matching(&self, matchers: &[LabelMatcher]) -> RoaringBitmap {
        // Positive, selective matchers first: they shrink the set the others are applied to.
        let mut order: Vec<&LabelMatcher> = matchers.iter().collect();
        order.sort_by_key(|m| match m.op {
            MatchOp::Eq if !m.value.is_empty() => 0,
            MatchOp::Re if !m.matches("") => 1,
            _ => 2,
        });
        let mut set: Option<RoaringBitmap> = None;
        for m in order {
            let accepted = self.accepted(m);
            set = Some(match set {
                None => accepted,
                Some(s) => s & accepted,
            });
            if set.as_ref().is_some_and(RoaringBitmap::is_empty) {
                break;
            }
        }
        set.unwrap_or_else(|| self.all.clone())
    }

    /// The series a single matcher accepts.
    fn accepted(&self, m: &LabelMatcher) -> RoaringBitmap {
        let values = self.postings.get(&m.name);
        let with_label = || {
            let mut b = RoaringBitmap::new();
            for v in values.into_iter().flat_map(|vs| vs.values()) {
                b |= v;
            }
            b
        };
        let matching_values = || {
            let mut b = RoaringBitmap::new();
            for (v, ids) in values.into_iter().flatten() {
                if m.matches(v) {
                    b |= ids;
                }
            }
            b
        };
        if m.op == MatchOp::Eq && !m.value.is_empty() {
            return values.and_then(|vs| vs.get(&m.value)).cloned().unwrap_or_default();
        }
        if m.matches("") {
            // Series without the label match; among those with it, drop the values it rejects.
            let mut rejected = RoaringBitmap::new();
            for (v, ids) in values.into_iter().flatten() {
                if !m.matches(v) {
                    rejected |= ids;
                }
            }
            &self.all - rejected
        } else if matches!(m.op, MatchOp::Neq) {
            // A `!=` that rejects the empty value is `!= ""`: every series with the label.
            with_label()
        } else {
            matching_values()
        }
    }

    /// Names of the labels of the given series (or all series).
    pub(crate) fn label_names(&self, ids: Option<&RoaringBitmap>) -> BTreeSet<String> {
        self.postings
            .iter()
            .filter(|(_, values)| match ids {
                None => true,
                Some(ids) => values.values().any(|b| !b.is_disjoint(ids)),
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Values of one label over the given series (or all series).
    pub(crate) fn label_values(&self, name: &str, ids: Option<&RoaringBitmap>) -> BTreeSet<String> {
        self.postings
            .get(name)
            .into_iter()
            .flatten()
            .filter(|(_, b)| ids.is_none_or(|ids| !b.is_disjoint(ids)))
            .map(|(v, _)| v.clone())
            .collect()
    }
}

/// Every tenant's series.
pub(crate) struct SeriesCatalog {
    root: PathBuf,
    tenants: RwLock<HashMap<Tenant, Arc<RwLock<TenantSeries>>>>,
}

impl SeriesCatalog {
    /// Loads `series.bin` of every tenant under `root` (`<data>/metrics`), see
    /// [`crate::catalog::load_label_file`]; with how each file was loaded, for [`SeriesCatalog::check_parts`].
    pub(crate) fn load(root: &Path, quarantine: &Quarantine) -> Result<(SeriesCatalog, Vec<(Tenant, LabelFile)>)> {
        let catalog = SeriesCatalog { root: root.to_path_buf(), tenants: RwLock::default() };
        let files = catalog.load_files(quarantine)?;
        Ok((catalog, files))
    }

    /// Reads every tenant's series file into the catalog (series it already has keep their ids): at the
    /// start, and when a query node follows a directory another process writes.
    pub(crate) fn load_files(&self, quarantine: &Quarantine) -> Result<Vec<(Tenant, LabelFile)>> {
        let mut files = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Ok(files);
        };
        let mut scratch = Vec::new();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(tenant) = name.to_str().and_then(|n| n.strip_prefix("tenant=")).and_then(|t| Tenant::new(t).ok())
            else {
                continue;
            };
            let path = entry.path().join("series.bin");
            let t = self.tenant(&tenant);
            let mut t = t.write();
            let file = load_label_file(&path, true, quarantine, |id, labels| {
                let hash = labels_hash(labels.iter(), &mut scratch);
                t.insert(hash, labels, Some(id.0 as u32), true, true);
            })?;
            drop(t);
            files.push((tenant, file));
        }
        Ok(files)
    }

    /// Once the WAL is replayed: keeps new series ids above every id the tenant's parts (`max_part_ids`)
    /// and the replayed samples use, so that a series whose labels were lost never lends its id (and its
    /// samples) to a new one; checks that the highest id of the parts has its labels (the catalog file is
    /// appended before the manifest names parts that use new ids, so a loss shows there first); then
    /// cuts torn tails, which held nothing the parts use.
    ///
    /// # Errors
    /// [`crate::Error::Refused`] naming the file whose loss would leave the parts' samples without labels.
    pub(crate) fn check_parts(
        &self,
        files: &[(Tenant, LabelFile)],
        max_part_ids: &HashMap<Tenant, u32>,
        max_replayed_ids: &HashMap<Tenant, u32>,
    ) -> Result<()> {
        for (tenant, &max) in max_part_ids.iter().chain(max_replayed_ids) {
            self.tenant(tenant).write().reserve_ids(max);
        }
        for (tenant, file) in files {
            let Some(&max) = max_part_ids.get(tenant) else {
                file.cut_torn_tail()?;
                continue;
            };
            // Only a tail that looks torn, or a missing file, can have lost what parts use at this start;
            // a salvage was the operator's choice to go on without it.
            let suspect = !file.salvaged && (!file.present || file.torn_tail.is_some());
            if suspect && self.tenant(tenant).read().labels(max).is_none() {
                return Err(
                    file.lost(format!("the tenant's parts hold samples of series id {max}, which it does not name"))
                );
            }
            file.cut_torn_tail()?;
        }
        Ok(())
    }

    /// The tenant's series, created empty on first use.
    pub(crate) fn tenant(&self, tenant: &Tenant) -> Arc<RwLock<TenantSeries>> {
        if let Some(t) = self.tenants.read().get(tenant) {
            return t.clone();
        }
        self.tenants.write().entry(tenant.clone()).or_default().clone()
    }

    /// Every tenant with series.
    pub(crate) fn tenants(&self) -> Vec<Tenant> {
        self.tenants.read().keys().cloned().collect()
    }

    pub(crate) fn get(&self, tenant: &Tenant) -> Option<Arc<RwLock<TenantSeries>>> {
        self.tenants.read().get(tenant).cloned()
    }

    pub(crate) fn series_count(&self) -> usize {
        self.tenants.read().values().map(|t| t.read().len()).sum()
    }

    /// Appends the series registered since the last call to their tenants' files.
    pub(crate) fn persist(&self) -> Result<()> {
        for (tenant, series) in self.tenants.read().iter() {
            let mut s = series.write();
            if s.unpersisted.is_empty() {
                continue;
            }
            let path = self.root.join(format!("tenant={tenant}")).join("series.bin");
            let records = s.unpersisted.iter().filter_map(|&id| Some((u64::from(id), s.labels(id)?.as_ref())));
            append_label_records(&path, records, true)?;
            s.unpersisted.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect())
    }

    fn add(t: &mut TenantSeries, pairs: &[(&str, &str)]) -> u32 {
        let l = labels(pairs);
        let h = labels_hash(l.iter(), &mut Vec::new());
        t.insert(h, l, None, false, false)
    }

    fn ids(b: RoaringBitmap) -> Vec<u32> {
        b.iter().collect()
    }

    #[test]
    fn postings_answer_matchers_like_a_scan() {
        let mut t = TenantSeries::default();
        let a = add(&mut t, &[("__name__", "up"), ("job", "api"), ("env", "prod")]);
        let b = add(&mut t, &[("__name__", "up"), ("job", "db")]);
        let c = add(&mut t, &[("__name__", "http_requests_total"), ("job", "api"), ("code", "500")]);
        assert_eq!(add(&mut t, &[("__name__", "up"), ("job", "api"), ("env", "prod")]), a, "same labels, same id");
        let m = |n: &str, op, v: &str| LabelMatcher::new(n, op, v).unwrap();
        assert_eq!(ids(t.matching(&[m("__name__", MatchOp::Eq, "up")])), vec![a, b]);
        assert_eq!(ids(t.matching(&[m("job", MatchOp::Eq, "api"), m("__name__", MatchOp::Neq, "up")])), vec![c]);
        assert_eq!(ids(t.matching(&[m("env", MatchOp::Eq, "")])), vec![b, c], "absent label equals empty");
        assert_eq!(ids(t.matching(&[m("env", MatchOp::Neq, "")])), vec![a]);
        assert_eq!(ids(t.matching(&[m("job", MatchOp::Re, "a.*|d.")])), vec![a, b, c]);
        assert_eq!(ids(t.matching(&[m("job", MatchOp::Nre, "api")])), vec![b]);
        assert_eq!(ids(t.matching(&[m("code", MatchOp::Re, ".*")])), vec![a, b, c], ".* accepts absent labels");
        assert_eq!(ids(t.matching(&[m("code", MatchOp::Re, ".+")])), vec![c]);
        assert_eq!(ids(t.matching(&[m("nope", MatchOp::Eq, "x")])), Vec::<u32>::new());
        // The same answer as testing every series' labels.
        let ms = vec![m("job", MatchOp::Nre, "d.*"), m("env", MatchOp::Neq, "prod")];
        let want: Vec<u32> = (0..3)
            .filter(|&id| ms.iter().all(|m| m.matches(t.labels(id).unwrap().get(&m.name).unwrap_or(""))))
            .collect();
        assert_eq!(ids(t.matching(&ms)), want);
        assert_eq!(t.label_values("job", None).into_iter().collect::<Vec<_>>(), vec!["api", "db"]);
        let only_b = RoaringBitmap::from_iter([b]);
        assert_eq!(t.label_names(Some(&only_b)).into_iter().collect::<Vec<_>>(), vec!["__name__", "job"]);
    }

    fn quarantine(dir: &Path) -> Quarantine {
        Quarantine::new(
            dir,
            crate::metrics::StoreMetrics::register(&mut prometheus_client::registry::Registry::default()),
        )
    }

    #[test]
    fn series_file_round_trips_ids() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let q = quarantine(dir.path());
        let (cat, _) = SeriesCatalog::load(dir.path(), &q).unwrap();
        let tenant = Tenant::new("t1").unwrap();
        let (x, y) = {
            let t = cat.tenant(&tenant);
            let mut t = t.write();
            (add(&mut t, &[("__name__", "x")]), add(&mut t, &[("__name__", "y"), ("a", "b")]))
        };
        cat.persist().unwrap();
        // A torn append (a crash mid-write) is cut off once the parts are known not to use it.
        let file = dir.path().join("tenant=t1").join("series.bin");
        let len = std::fs::metadata(&file).unwrap().len();
        std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(&[7, 0, 0, 0, 1, 2]).unwrap();
        let (again, files) = SeriesCatalog::load(dir.path(), &q).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().len(), len + 6, "loading changes nothing");
        again.check_parts(&files, &HashMap::from([(tenant.clone(), y)]), &HashMap::new()).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().len(), len);
        let t = again.get(&tenant).unwrap();
        let t = t.read();
        assert_eq!(t.labels(x).unwrap().get("__name__"), Some("x"));
        assert_eq!(t.labels(y).unwrap().get("a"), Some("b"));
        assert!(t.entry(y).unwrap().logged.load(Ordering::Relaxed));
        assert_eq!(t.len(), 2);
    }

    /// Issue 17 §5: a damaged series.bin dropped every series with a WARN, and new series took the old ids.
    #[test]
    fn a_damaged_series_file_stops_the_start_and_a_salvage_never_reuses_ids() {
        let dir = tempfile::tempdir().unwrap();
        let q = quarantine(dir.path());
        let tenant = Tenant::new("t1").unwrap();
        let file = dir.path().join("tenant=t1").join("series.bin");
        {
            let (cat, _) = SeriesCatalog::load(dir.path(), &q).unwrap();
            let t = cat.tenant(&tenant);
            for name in ["a", "b", "c"] {
                add(&mut t.write(), &[("__name__", name)]); // ids 0, 1, 2: one frame each
                cat.persist().unwrap();
            }
        }
        let good = std::fs::read(&file).unwrap();
        let frame_len = |at: usize| 8 + u32::from_le_bytes(good[at..at + 4].try_into().unwrap()) as usize;
        let second = frame_len(0);
        let third = second + frame_len(second);

        // Damage in the middle, intact records after it: refused at once, the file untouched.
        let mut bad = good.clone();
        bad[second + 10] ^= 0xff;
        std::fs::write(&file, &bad).unwrap();
        let err = SeriesCatalog::load(dir.path(), &q).err().expect("refused").to_string();
        assert!(err.contains(&file.display().to_string()) && err.contains("series.bin.salvage"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), bad);

        // Damage in the last frame looks like a torn append; the parts say it is not (they use id 2).
        let mut bad = good.clone();
        bad[third + 10] ^= 0xff;
        std::fs::write(&file, &bad).unwrap();
        let max_part_ids = HashMap::from([(tenant.clone(), 2u32)]);
        let (cat, files) = SeriesCatalog::load(dir.path(), &q).unwrap();
        let err = cat.check_parts(&files, &max_part_ids, &HashMap::new()).unwrap_err().to_string();
        assert!(err.contains("series id 2"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), bad, "nothing is cut");

        // The operator asks for a salvage: the intact records are kept, id 2 is never given again.
        std::fs::rename(&file, dir.path().join("tenant=t1/series.bin.salvage")).unwrap();
        let (cat, files) = SeriesCatalog::load(dir.path(), &q).unwrap();
        cat.check_parts(&files, &max_part_ids, &HashMap::new()).unwrap();
        let t = cat.get(&tenant).unwrap();
        assert_eq!(t.read().len(), 2);
        assert_eq!(add(&mut t.write(), &[("__name__", "d")]), 3, "above the ids the parts use");
        assert!(dir.path().join("quarantine/tenant=t1/series.bin.salvage").exists());
        assert_eq!(q.metrics().quarantined_files.get(), 1);
        cat.persist().unwrap();
        let (cat, _) = SeriesCatalog::load(dir.path(), &q).unwrap();
        let t = cat.get(&tenant).unwrap();
        let names: Vec<_> = [0, 1, 2, 3].iter().map(|&id| t.read().labels(id).map(|l| l.to_string())).collect();
        assert_eq!(names[2], None);
        assert!(names[0].is_some() && names[1].is_some() && names[3].is_some(), "{names:?}");
    }

    #[test]
    fn replayed_samples_keep_their_ids_from_new_series() {
        let dir = tempfile::tempdir().unwrap();
        let q = quarantine(dir.path());
        let tenant = Tenant::new("t1").unwrap();
        let (cat, files) = SeriesCatalog::load(dir.path(), &q).unwrap();
        // Samples of id 7 replayed from the WAL, whose labels were lost with a damaged record.
        cat.check_parts(&files, &HashMap::new(), &HashMap::from([(tenant.clone(), 7)])).unwrap();
        assert_eq!(add(&mut cat.tenant(&tenant).write(), &[("__name__", "new")]), 8);
    }
}
