//! Helpers shared by the store's unit tests.

/// A xorshift64 generator: the same pseudo-random sequence for a seed on every run.
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
