//! The kubelet's pod log layout: `<pods_dir>/<namespace>_<pod>_<uid>/<container>/<n>.log`, with rotations
//! beside the current file as `<n>.log.<timestamp>` and, once older, `<n>.log.<timestamp>.gz`.

use std::path::{Path, PathBuf};

/// One container's log directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerDir {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
    pub dir: PathBuf,
}

/// What kind of log file a name in a container directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    /// `<n>.log.<timestamp>.gz`: an older rotation, compressed.
    Gzip,
    /// `<n>.log.<timestamp>`: the latest rotation, still being finished.
    Rotated,
    /// `<n>.log`: the file the runtime writes to.
    Current,
}

/// A log file found in a container directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    pub path: PathBuf,
    pub kind: FileKind,
}

/// Splits a pod directory name `<namespace>_<pod>_<uid>`. Namespace and pod names are DNS labels and
/// subdomains, which hold no `_`, and neither does a uid.
pub fn parse_pod_dir(name: &str) -> Option<(&str, &str, &str)> {
    let mut parts = name.split('_');
    let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || ns.is_empty() || pod.is_empty() || uid.is_empty() {
        return None;
    }
    Some((ns, pod, uid))
}

/// The kind of a file name, or `None` for names that are not container logs (temporary files and such).
pub fn classify(name: &str) -> Option<FileKind> {
    let (stem, rest) = name.split_once(".log")?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if rest.is_empty() {
        return Some(FileKind::Current);
    }
    let rest = rest.strip_prefix('.')?;
    if rest.ends_with(".tmp") || rest.is_empty() {
        return None;
    }
    Some(if rest.ends_with(".gz") { FileKind::Gzip } else { FileKind::Rotated })
}

/// Every container directory under `pods_dir`. Unreadable or oddly named entries are skipped.
///
/// # Errors
/// When `pods_dir` itself cannot be read.
pub fn scan(pods_dir: &Path) -> std::io::Result<Vec<ContainerDir>> {
    let mut out = Vec::new();
    for pod in std::fs::read_dir(pods_dir)? {
        let Ok(pod) = pod else { continue };
        let name = pod.file_name();
        let Some((ns, pod_name, uid)) = name.to_str().and_then(parse_pod_dir) else { continue };
        let Ok(containers) = std::fs::read_dir(pod.path()) else { continue };
        for c in containers {
            let Ok(c) = c else { continue };
            if !c.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Some(container) = c.file_name().to_str().map(str::to_string) else { continue };
            out.push(ContainerDir {
                namespace: ns.to_string(),
                pod: pod_name.to_string(),
                uid: uid.to_string(),
                container,
                dir: c.path(),
            });
        }
    }
    out.sort();
    Ok(out)
}

/// The log files of one container directory, oldest first: compressed rotations, then the latest rotation,
/// then the current file; within a kind by name (the kubelet's timestamps sort by time).
pub fn list_files(dir: &Path) -> Vec<LogFile> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<LogFile> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let kind = classify(name.to_str()?)?;
            Some(LogFile { path: e.path(), kind })
        })
        .collect();
    out.sort_by(|a, b| a.kind.cmp(&b.kind).then_with(|| a.path.cmp(&b.path)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_dir_names() {
        assert_eq!(
            parse_pod_dir("kube-system_coredns-5d78c9869d-x2x9k_0b9c3e0e-6f63-4a49-9a6c-1f0e1b1d2c3d"),
            Some(("kube-system", "coredns-5d78c9869d-x2x9k", "0b9c3e0e-6f63-4a49-9a6c-1f0e1b1d2c3d"))
        );
        assert_eq!(parse_pod_dir("a_b"), None);
        assert_eq!(parse_pod_dir("a_b_c_d"), None);
        assert_eq!(parse_pod_dir("_b_c"), None);
    }

    #[test]
    fn file_kinds() {
        assert_eq!(classify("0.log"), Some(FileKind::Current));
        assert_eq!(classify("12.log"), Some(FileKind::Current));
        assert_eq!(classify("0.log.20261122-101500"), Some(FileKind::Rotated));
        assert_eq!(classify("0.log.20261122-101500.gz"), Some(FileKind::Gzip));
        assert_eq!(classify("0.log.20261122-101500.tmp"), None);
        assert_eq!(classify("x.log"), None);
        assert_eq!(classify("0.txt"), None);
    }

    #[test]
    fn scan_and_list() {
        let tmp = tempfile::tempdir().unwrap();
        let c = tmp.path().join("default_web-1_uid-1").join("app");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::create_dir_all(tmp.path().join("not-a-pod")).unwrap();
        for f in ["0.log", "0.log.20261122-100000.gz", "0.log.20261122-110000", "0.log.x.tmp"] {
            std::fs::write(c.join(f), b"x\n").unwrap();
        }
        let dirs = scan(tmp.path()).unwrap();
        assert_eq!(dirs.len(), 1);
        assert_eq!((dirs[0].namespace.as_str(), dirs[0].pod.as_str()), ("default", "web-1"));
        assert_eq!((dirs[0].uid.as_str(), dirs[0].container.as_str()), ("uid-1", "app"));
        let kinds: Vec<FileKind> = list_files(&c).iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [FileKind::Gzip, FileKind::Rotated, FileKind::Current]);
    }
}
