//! Substring filters: each data page of a part's `message` column carries a small Bloom filter over the
//! byte trigrams of its lines, so a search for a substring decompresses only the pages that may hold
//! every trigram of it (issue 23).
//!
//! The token filters of [`crate::tokens`] rule out row groups by whole words, but a substring such as
//! `error` may sit inside a longer word (`errors`, `stderr`), so they cannot decide it; every trigram of
//! it, though, is in any line that holds it. Trigrams are taken within each line, never across two.
//!
//! Building: a page's trigrams are set in a scratch of 2^17 positions, one per trigram by a multiplicative
//! hash of its three bytes read as a little-endian number (a byte per position, 128 KiB: setting one is
//! a plain store, which measured faster than a bit that must be loaded first); the number of positions
//! set, `d`, is about the number of distinct trigrams. The stored filter has `m = 4·d` bits (a multiple of
//! 64, at most 2^17), and scratch position `p` becomes filter bit `⌊p·m / 2^17⌋`.
//! About 22 % of a filter's bits are set (more on a page of over 30,000 distinct trigrams, where the
//! scratch itself fills up), so a page that lacks all three trigrams of `error` passes by chance about
//! once in a hundred; the workload's pages hold 6,000–16,000 distinct trigrams per MiB of
//! lines (3–8 KiB of filter). A page with no trigram at all (only lines shorter than three bytes) has an
//! empty filter, which no needle of three bytes or more passes.

/// Bits of a trigram's hash: the build scratch has 2^17 positions.
const SCRATCH_BITS: u32 = 17;
/// The kind byte of page filters built as this module builds them (see [`PageFilters`]).
const KIND: u8 = 1;
/// Filter bits per distinct trigram.
const BITS_PER_TRIGRAM: u64 = 4;

/// Three bytes as a little-endian number.
fn trigram(w: &[u8]) -> u32 {
    u32::from(w[0]) | (u32::from(w[1]) << 8) | (u32::from(w[2]) << 16)
}

/// A trigram's position in the scratch: the top bits of a multiplicative hash of its 24 bits.
fn position(trigram: u32) -> u32 {
    trigram.wrapping_mul(0x9E37_79B1) >> (32 - SCRATCH_BITS)
}

/// The scratch positions of a needle's trigrams (sorted, distinct); empty for needles shorter than three
/// bytes, which no page filter can decide.
pub(crate) fn needle_positions(needle: &[u8]) -> Vec<u32> {
    let mut out: Vec<u32> = needle.windows(3).map(|w| position(trigram(w))).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether a page whose filter is `filter` may hold a line with the needle of `positions` (see
/// [`needle_positions`]; empty positions decide nothing and pass).
pub(crate) fn may_contain(filter: &[u8], positions: &[u32]) -> bool {
    if positions.is_empty() {
        return true;
    }
    let m = filter.len() as u64 * 8;
    positions.iter().all(|&p| {
        let bit = (u64::from(p) * m) >> SCRATCH_BITS;
        filter.get((bit >> 3) as usize).is_some_and(|b| b & (1 << (bit & 7)) != 0)
    })
}

/// Builds page filters one page at a time, reusing its scratch.
pub(crate) struct PageFilterBuilder {
    /// One byte per scratch position: setting one is a store, with no load to wait for.
    scratch: Vec<u8>,
}

impl Default for PageFilterBuilder {
    fn default() -> Self {
        PageFilterBuilder { scratch: vec![0; 1 << SCRATCH_BITS] }
    }
}

impl PageFilterBuilder {
    /// Adds one line of the current page.
    pub(crate) fn add(&mut self, line: &[u8]) {
        if line.len() < 3 {
            return;
        }
        let scratch = &mut self.scratch[..];
        let mut set = |t: u32| scratch[position(t) as usize] = 1;
        // Eight bytes at a time give six trigrams that do not wait for each other; the two that start in
        // its last bytes are taken with the next eight.
        let mut at = 0;
        while at + 8 <= line.len() {
            let w = u64::from_le_bytes(line[at..at + 8].try_into().unwrap_or_default());
            for k in 0..6 {
                let t = (w >> (8 * k)) as u32;
                set(t & 0x00FF_FFFF);
            }
            at += 6;
        }
        for w in line[at..].windows(3) {
            set(trigram(w));
        }
    }

    /// Appends the current page's filter to `out`, returns its length in bytes, and starts a new page.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) -> usize {
        let d: u64 = self.scratch.iter().map(|&b| u64::from(b)).sum();
        let m = (d * BITS_PER_TRIGRAM).next_multiple_of(64).min(1 << SCRATCH_BITS);
        let mut words = vec![0u64; (m / 64) as usize];
        for (i, chunk) in self.scratch.chunks_exact_mut(8).enumerate() {
            let mut x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            if x == 0 {
                continue;
            }
            chunk.fill(0);
            while x != 0 {
                let p = (i as u64) * 8 + u64::from(x.trailing_zeros() / 8);
                let bit = (p * m) >> SCRATCH_BITS;
                words[(bit >> 6) as usize] |= 1 << (bit & 63);
                x &= !(0xFF << (x.trailing_zeros() / 8 * 8));
            }
        }
        for w in &words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        words.len() * 8
    }
}

/// A row group's page filters as stored in a part's index (see `crate::part`):
///
/// ```text
/// u8 kind (1: these trigram filters) | u32le n_pages
/// | n_pages × (u32le first_row in the row group, u32le filter_len) | the filters, in order
/// ```
///
/// A reader that does not know the kind reads the row group in full: another hash or scratch size
/// later must get a new kind, never reuse this one.
pub(crate) struct PageFilters<'a> {
    /// (first row in the row group, filter).
    pages: Vec<(u64, &'a [u8])>,
}

impl<'a> PageFilters<'a> {
    /// Reads a row group's page filters; `None` when the bytes are not well formed (the row group is then
    /// read as if it had none).
    pub(crate) fn parse(bytes: &'a [u8]) -> Option<PageFilters<'a>> {
        if bytes.first() != Some(&KIND) {
            return None;
        }
        let u32_at = |i: usize| -> Option<u32> { Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?)) };
        let n = u32_at(1)? as usize;
        let mut at = 5usize.checked_add(n.checked_mul(8)?)?;
        let mut pages = Vec::with_capacity(n.min(bytes.len() / 8));
        let mut last = None;
        for i in 0..n {
            let first = u64::from(u32_at(5 + i * 8)?);
            let len = u32_at(9 + i * 8)? as usize;
            if last.is_some_and(|l| first <= l) || (i == 0 && first != 0) {
                return None;
            }
            last = Some(first);
            pages.push((first, bytes.get(at..at.checked_add(len)?)?));
            at += len;
        }
        (at == bytes.len()).then_some(PageFilters { pages })
    }

    /// Encodes the filters of pages starting at `firsts` (rows in the row group, the first 0), whose
    /// filters lie end to end in `filters` with the lengths `lens`.
    pub(crate) fn encode(firsts: &[u64], lens: &[usize], filters: &[u8], out: &mut Vec<u8>) {
        out.push(KIND);
        out.extend_from_slice(&(firsts.len() as u32).to_le_bytes());
        for (first, len) in firsts.iter().zip(lens) {
            out.extend_from_slice(&(*first as u32).to_le_bytes());
            out.extend_from_slice(&(*len as u32).to_le_bytes());
        }
        out.extend_from_slice(filters);
    }

    /// The rows (in the row group, of `rows` in all) of the pages that may hold a line with every needle
    /// (each given by its [`needle_positions`]), adjacent pages joined; the number of pages ruled out.
    pub(crate) fn passing(&self, rows: u64, needles: &[Vec<u32>]) -> (Vec<std::ops::Range<u64>>, u64) {
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        let mut skipped = 0;
        for (i, (first, filter)) in self.pages.iter().enumerate() {
            let end = self.pages.get(i + 1).map_or(rows, |p| p.0).min(rows);
            if *first >= end {
                continue;
            }
            if !needles.iter().all(|n| may_contain(filter, n)) {
                skipped += 1;
                continue;
            }
            match out.last_mut() {
                Some(r) if r.end == *first => r.end = end,
                _ => out.push(*first..end),
            }
        }
        (out, skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(lines: &[&str]) -> Vec<u8> {
        let mut b = PageFilterBuilder::default();
        for l in lines {
            b.add(l.as_bytes());
        }
        let mut out = Vec::new();
        let len = b.finish(&mut out);
        assert_eq!(len, out.len());
        out
    }

    /// Every substring of every line passes its page's filter (no false negatives), whatever its size;
    /// few needles the page lacks pass, and the scratch is clean for the next page.
    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut next = crate::testutil::xorshift(0x9e37_79b9_7f4a_7c15u64);
        let mut b = PageFilterBuilder::default();
        for page_lines in [1usize, 10, 1000, 20_000] {
            let lines: Vec<Vec<u8>> = (0..page_lines)
                .map(|_| {
                    (0..next() % 120)
                        .map(|_| b"abcdefghijklmnopqrstuvwxyz0123456789 :/"[(next() % 39) as usize])
                        .collect()
                })
                .collect();
            for l in &lines {
                b.add(l);
            }
            let mut filter = Vec::new();
            b.finish(&mut filter);
            for l in lines.iter().take(300) {
                for _ in 0..5 {
                    if l.len() < 3 {
                        continue;
                    }
                    let s = (next() as usize) % (l.len() - 2);
                    let e = s + 3 + (next() as usize) % (l.len() - s - 2);
                    assert!(may_contain(&filter, &needle_positions(&l[s..e])), "{:?}", &l[s..e]);
                }
            }
            // Needles of bytes no line has: every trigram is absent, so few pass.
            let false_pos = (0..1000)
                .filter(|_| {
                    let needle: Vec<u8> =
                        (0..5).map(|_| b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"[(next() % 26) as usize]).collect();
                    may_contain(&filter, &needle_positions(&needle))
                })
                .count();
            // Random text over 39 bytes has far more distinct trigrams than log lines (about 40,000 in the
            // page of 1,000 lines, all 59,319 in the largest, against 6,000-16,000 in a MiB of real logs):
            // its filters are fuller, and the largest is at the 2^17-bit cap with 36 % of its bits set.
            let bound = if page_lines > 1000 { 80 } else { 50 };
            assert!(false_pos < bound, "{false_pos} of 1000 passed a page of {page_lines} lines");
        }
        assert!(b.scratch.iter().all(|w| *w == 0));
    }

    #[test]
    fn trigrams_stay_within_a_line_and_short_needles_pass() {
        let f = build(&["abc", "def"]);
        assert!(may_contain(&f, &needle_positions(b"abc")) && may_contain(&f, &needle_positions(b"def")));
        // "cde" and "bcd" would only exist across the two lines.
        assert!(!may_contain(&f, &needle_positions(b"bcdef")));
        assert!(may_contain(&f, &needle_positions(b"zz")), "needles under three bytes are not decided");
        let empty = build(&["a", "bc", ""]);
        assert!(empty.is_empty());
        assert!(!may_contain(&empty, &needle_positions(b"abc")));
        assert!(may_contain(&empty, &needle_positions(b"bc")));
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // single ranges are the case under test
    fn page_filters_encode_parse_and_select_rows() {
        let mut b = PageFilterBuilder::default();
        let mut filters = Vec::new();
        let mut lens = Vec::new();
        for page in [&["an error here", "ok"][..], &["all fine"], &["error: disk full"]] {
            for l in page {
                b.add(l.as_bytes());
            }
            lens.push(b.finish(&mut filters));
        }
        let mut blob = Vec::new();
        PageFilters::encode(&[0, 2, 3], &lens, &filters, &mut blob);
        let pages = PageFilters::parse(&blob).unwrap();
        let error = vec![needle_positions(b"error")];
        assert_eq!(pages.passing(4, &error), (vec![0..2, 3..4], 1));
        assert_eq!(pages.passing(4, &[needle_positions(b"fine")]), (vec![2..3], 2));
        assert_eq!(pages.passing(4, &[]), (vec![0..4], 0));
        // Malformed: truncated, trailing bytes, first page not at row 0, rows not increasing.
        assert!(PageFilters::parse(&blob[..blob.len() - 1]).is_none());
        assert!(PageFilters::parse(&[blob.as_slice(), &[0]].concat()).is_none());
        let mut bad = blob.clone();
        bad[5] = 1;
        assert!(PageFilters::parse(&bad).is_none());
        let mut bad = blob.clone();
        bad[13] = 0;
        assert!(PageFilters::parse(&bad).is_none());
        let mut bad = blob.clone();
        bad[0] = 2;
        assert!(PageFilters::parse(&bad).is_none(), "a kind this reader does not know");
        assert!(PageFilters::parse(&[]).is_none());
        assert!(PageFilters::parse(&[&[KIND][..], &u32::MAX.to_le_bytes()].concat()).is_none());
    }
}
