//! `lumen backup`: snapshot a running server and copy the snapshot away.

use std::path::PathBuf;

/// `lumen backup --server URL --to DIR`.
pub fn run(
    server: String,
    to: PathBuf,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    keep_snapshot: bool,
) -> anyhow::Result<()> {
    let token = match token_file {
        Some(f) => Some(
            std::fs::read_to_string(&f)
                .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("LUMEN_AUTH_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()),
    };
    let args = lumen::backup::BackupArgs { server, to: to.clone(), token, ca_file, keep_snapshot };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let copied = runtime.block_on(lumen::backup::run(&args))?;
    eprintln!(
        "backed up {} files ({} bytes) to {}; restore: lumen server --data-dir {}",
        copied.files,
        copied.bytes,
        to.display(),
        to.display()
    );
    Ok(())
}
