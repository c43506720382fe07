//! `lumen backup`: asks a running server for a snapshot (`POST /api/v1/admin/snapshot`), copies it to a
//! directory of its own, and deletes the snapshot. The copy is a complete data directory: restoring is
//! starting a server on it (`lumen server --data-dir <copy>`, or moving it where the old one was).
//!
//! It runs where the server's data directory is (the same machine, or `kubectl exec` into the pod): the
//! snapshot is made inside the data directory, with hard links, and copied from there.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// What `lumen backup` was asked.
#[derive(Debug, Clone)]
pub struct BackupArgs {
    /// The server's base URL, e.g. `http://127.0.0.1:9700`.
    pub server: String,
    /// The directory to copy the snapshot to; must not exist or be empty.
    pub to: PathBuf,
    /// A token with the `admin` scope (`LUMEN_AUTH_TOKEN` or a file).
    pub token: Option<String>,
    /// Extra CA certificate for an https server.
    pub ca_file: Option<PathBuf>,
    /// Leave the snapshot in the data directory after copying it.
    pub keep_snapshot: bool,
}

/// What a backup copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    pub files: u64,
    pub bytes: u64,
}

/// Runs a backup; returns what it copied.
///
/// # Errors
/// The server refused or could not be reached, the snapshot is not on this machine, the destination is
/// not empty, or a copy failed (the partial copy is left for inspection and named).
pub async fn run(args: &BackupArgs) -> anyhow::Result<Copied> {
    if args.to.exists() && std::fs::read_dir(&args.to).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists and is not empty: back up into a new directory", args.to.display());
    }
    let files = collector::client::TlsFiles { ca: args.ca_file.clone(), client_cert: None };
    let client = collector::client::builder(&files).map_err(anyhow::Error::msg)?.build()?;
    let base = args.server.trim_end_matches('/');
    let auth = |r: reqwest::RequestBuilder| match &args.token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    let resp = auth(client.post(format!("{base}/api/v1/admin/snapshot")))
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {base}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "{base} answered {status} to the snapshot request: {body} (a token with the admin scope is needed when tokens are on)"
        );
    }
    let (name, path) =
        (body["data"]["name"].as_str().unwrap_or_default(), body["data"]["path"].as_str().unwrap_or_default());
    let snapshot = PathBuf::from(path);
    if !snapshot.is_dir() {
        bail!(
            "the snapshot {name} is at {path} on the server's machine, which is not here: run lumen backup where the \
             data directory is (for a pod: kubectl exec), or copy that directory yourself and delete it with \
             DELETE /api/v1/admin/snapshot/{name}"
        );
    }
    let to = args.to.clone();
    let copied = tokio::task::spawn_blocking(move || copy_dir(&snapshot, &to)).await?.with_context(|| {
        format!("copying the snapshot to {} failed; the partial copy is left there", args.to.display())
    })?;
    if !args.keep_snapshot {
        let r = auth(client.delete(format!("{base}/api/v1/admin/snapshot/{name}"))).send().await?;
        if !r.status().is_success() {
            bail!("copied, but deleting the snapshot {name} failed: {}", r.status());
        }
    }
    Ok(copied)
}

/// Copies the tree at `from` to `to` (created), syncing every file and directory.
pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<Copied> {
    let mut out = Copied::default();
    let mut stack = vec![(from.to_path_buf(), to.to_path_buf())];
    while let Some((src, dst)) = stack.pop() {
        std::fs::create_dir_all(&dst).with_context(|| format!("create {}", dst.display()))?;
        for e in std::fs::read_dir(&src).with_context(|| format!("read {}", src.display()))? {
            let e = e?;
            let (s, d) = (e.path(), dst.join(e.file_name()));
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push((s, d));
            } else if ft.is_file() {
                out.bytes += std::fs::copy(&s, &d).with_context(|| format!("copy {}", s.display()))?;
                std::fs::File::open(&d).and_then(|f| f.sync_all()).with_context(|| format!("sync {}", d.display()))?;
                out.files += 1;
            }
        }
        std::fs::File::open(&dst).and_then(|f| f.sync_all()).with_context(|| format!("sync {}", dst.display()))?;
    }
    Ok(out)
}
