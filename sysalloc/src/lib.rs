//! The process' memory allocator. On Linux with glibc, `lumen` allocates through jemalloc, set up here;
//! elsewhere (the static musl release binaries, other systems) through the system allocator.
//!
//! Why not glibc's malloc: with its defaults, buffers of a few hundred KiB to a few MiB (a request body,
//! a head batch, a decompressed page, a row group being encoded) come from per-thread arenas whose
//! freed holes between long-lived head batches the system never gets back, so resident memory stays at
//! its high-water mark; fixing glibc's mmap threshold bounds that, but then every such buffer is a fresh
//! mapping the kernel zeroes, which made a LogQL scan over every line 22 % slower. jemalloc keeps freed
//! pages for reuse for [`MALLOC_CONF`]'s `dirty_decay_ms` and then hands them back. Figures in
//! benches/RESULTS.md ("Peak memory during log ingest").
//!
//! The settings are [`MALLOC_CONF`]; a user may override any of them at run time with the environment
//! variable `_RJEM_MALLOC_CONF` (jemalloc's `MALLOC_CONF`, under the prefix its symbols carry here).

/// jemalloc's settings: one arena (small allocations are served by each thread's cache without a lock;
/// more arenas kept more memory, 151 against 140 MB at the peak of the 2,000,000-line ingest with two),
/// freed pages handed back after 100 ms by a background thread instead of on the next allocation.
pub const MALLOC_CONF: &str = "background_thread:true,narenas:1,dirty_decay_ms:100,muzzy_decay_ms:0";

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use tikv_jemalloc_ctl::{epoch, stats};

    #[global_allocator]
    static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// [`super::MALLOC_CONF`] as jemalloc reads it before `main`: a NUL-terminated string behind the
    /// symbol `malloc_conf` (prefixed like the rest of this jemalloc's symbols).
    #[allow(unsafe_code)]
    #[unsafe(export_name = "_rjem_malloc_conf")]
    static MALLOC_CONF_C: &[u8; super::MALLOC_CONF.len() + 1] = &{
        let mut out = [0u8; super::MALLOC_CONF.len() + 1];
        let src = super::MALLOC_CONF.as_bytes();
        let mut i = 0;
        while i < src.len() {
            out[i] = src[i];
            i += 1;
        }
        out
    };

    pub(crate) fn purge() -> bool {
        // `arena.<MALLCTL_ARENAS_ALL>.purge`: every arena's unused dirty pages go back to the system now.
        // It reads and writes nothing, and jemalloc refuses a call that passes a value buffer.
        // SAFETY: a NUL-terminated name, and null buffers for a mallctl that takes none.
        #[allow(unsafe_code)]
        let res = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"arena.4096.purge".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        res == 0
    }

    pub(crate) fn stats() -> Option<super::Stats> {
        epoch::advance().ok()?;
        Some(super::Stats {
            allocated: stats::allocated::read().ok()? as u64,
            resident: stats::resident::read().ok()? as u64,
            retained: stats::retained::read().ok()? as u64,
        })
    }

    pub(crate) fn name() -> &'static str {
        "jemalloc"
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(crate) fn purge() -> bool {
        false
    }

    pub(crate) fn stats() -> Option<super::Stats> {
        None
    }

    pub(crate) fn name() -> &'static str {
        "system"
    }
}

/// What the allocator holds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Allocated by the program and not freed.
    pub allocated: u64,
    /// In pages the allocator has touched and not handed back (its share of resident memory).
    pub resident: u64,
    /// Address space kept mapped for reuse but not resident.
    pub retained: u64,
}

/// Hands the pages the allocator keeps for reuse back to the system now instead of after their decay
/// time: for a caller under memory pressure. Returns whether the allocator did it.
pub fn release_free_memory() -> bool {
    imp::purge()
}

/// The allocator's own figures, where it has them (jemalloc).
pub fn stats() -> Option<Stats> {
    imp::stats()
}

/// `"jemalloc"` or `"system"`.
pub fn name() -> &'static str {
    imp::name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn jemalloc_serves_the_process_with_our_settings() {
        assert_eq!(name(), "jemalloc");
        // jemalloc read MALLOC_CONF: one arena (unless the environment overrides it).
        if std::env::var_os("_RJEM_MALLOC_CONF").is_none() {
            assert_eq!(tikv_jemalloc_ctl::opt::narenas::read().unwrap(), 1);
            assert!(tikv_jemalloc_ctl::opt::background_thread::read().unwrap());
        }
        let before = stats().unwrap();
        let block = vec![7u8; 64 << 20];
        let during = stats().unwrap();
        assert!(during.allocated >= before.allocated + (64 << 20), "{before:?} {during:?}");
        drop(block);
        assert!(release_free_memory());
        let after = stats().unwrap();
        assert!(after.allocated < during.allocated, "{during:?} {after:?}");
    }
}
