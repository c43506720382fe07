//! Full-text token filters: each row group of a part carries a split-block Bloom filter over the words of
//! its messages, so a search for `"connection refused"` reads only the row groups that may hold both words.
//!
//! A token is a maximal run of ASCII letters, digits and `_`, or of any non-ASCII bytes (so words in other
//! scripts are tokens too). Matching is case-sensitive, like LogQL's `|=`. Tokens made only of digits are
//! left out of the filter when `index_numbers` is off: in real logs they are mostly counters and
//! timestamps, nearly all distinct, and would double the filter's size for searches nobody makes.

use xxhash_rust::xxh3::xxh3_64;

/// Calls `f` with each token of `text`.
pub(crate) fn for_each_token<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && !is_token_byte(b[i]) {
            i += 1;
        }
        let start = i;
        while i < b.len() && is_token_byte(b[i]) {
            i += 1;
        }
        if i > start {
            // Token boundaries fall on ASCII bytes or the ends, so they are char boundaries.
            f(&text[start..i]);
        }
    }
}

const fn is_token_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Hashes of the tokens that any line containing `needle` must contain: the tokens of `needle` except a
/// first or last one that may continue beyond it in the line.
pub(crate) fn required_tokens(needle: &str, index_numbers: bool) -> Vec<u64> {
    let mut tokens = Vec::new();
    for_each_token(needle, |t| tokens.push(t));
    let b = needle.as_bytes();
    if b.first().is_some_and(|&c| is_token_byte(c)) && !tokens.is_empty() {
        tokens.remove(0);
    }
    if b.last().is_some_and(|&c| is_token_byte(c)) && !tokens.is_empty() {
        tokens.pop();
    }
    tokens.into_iter().filter(|t| index_numbers || !is_number(t)).map(token_hash).collect()
}

pub(crate) fn is_number(token: &str) -> bool {
    token.bytes().all(|c| c.is_ascii_digit())
}

pub(crate) fn token_hash(token: &str) -> u64 {
    xxh3_64(token.as_bytes())
}

/// Salts of the split-block Bloom filter, the odd constants of the Parquet specification's SBBF.
const SALT: [u32; 8] = [0x47b6137b, 0x44974d91, 0x8824ad5b, 0xa2b7289d, 0x705495c7, 0x2df1424b, 0x9efc4947, 0x5c6bfb31];

/// A split-block Bloom filter: 256-bit blocks, 8 bits set per key, one cache line touched per lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenFilter {
    blocks: Vec<[u32; 8]>,
}

impl TokenFilter {
    /// A filter sized for `distinct` keys at `bits_per_key` bits each.
    pub(crate) fn with_capacity(distinct: usize, bits_per_key: u32) -> TokenFilter {
        let bits = (distinct as u64 * u64::from(bits_per_key)).max(256);
        TokenFilter { blocks: vec![[0; 8]; bits.div_ceil(256) as usize] }
    }

    fn block(&self, hash: u64) -> usize {
        (((hash >> 32) * self.blocks.len() as u64) >> 32) as usize
    }

    fn mask(hash: u64) -> [u32; 8] {
        let key = hash as u32;
        SALT.map(|salt| 1u32 << (key.wrapping_mul(salt) >> 27))
    }

    pub(crate) fn insert(&mut self, hash: u64) {
        let i = self.block(hash);
        for (word, bit) in self.blocks[i].iter_mut().zip(Self::mask(hash)) {
            *word |= bit;
        }
    }

    pub(crate) fn may_contain(&self, hash: u64) -> bool {
        let block = &self.blocks[self.block(hash)];
        block.iter().zip(Self::mask(hash)).all(|(word, bit)| word & bit != 0)
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        self.blocks.iter().flatten().flat_map(|w| w.to_le_bytes()).collect()
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<TokenFilter> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(32) {
            return None;
        }
        let blocks = bytes
            .chunks_exact(32)
            .map(|c| std::array::from_fn(|i| u32::from_le_bytes(c[i * 4..i * 4 + 4].try_into().unwrap_or_default())))
            .collect();
        Some(TokenFilter { blocks })
    }
}

/// Slots of [`TokenCollector`]'s table of recently seen hashes.
const RECENT: usize = 4096;

/// Collects the distinct token hashes of a row group's messages, then builds its filter.
pub(crate) struct TokenCollector {
    hashes: std::collections::HashSet<u64, std::hash::BuildHasherDefault<IdentityHasher>>,
    /// The last hash seen in each slot (by its low bits): log lines repeat most of their words, and a
    /// word found here needs no probe of `hashes`.
    recent: Box<[u64; RECENT]>,
}

impl Default for TokenCollector {
    fn default() -> Self {
        TokenCollector { hashes: Default::default(), recent: Box::new([0; RECENT]) }
    }
}

/// Which bytes make tokens (see [`is_token_byte`]), as a table.
static TOKEN_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = is_token_byte(c as u8);
        c += 1;
    }
    t
};

impl TokenCollector {
    pub(crate) fn add_text(&mut self, text: &str, index_numbers: bool) {
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            while i < b.len() && !TOKEN_BYTE[b[i] as usize] {
                i += 1;
            }
            let start = i;
            let mut digits = true;
            while i < b.len() && TOKEN_BYTE[b[i] as usize] {
                digits &= b[i].is_ascii_digit();
                i += 1;
            }
            if i > start && (index_numbers || !digits) {
                // The same hash as `token_hash` of the token's text.
                let h = xxh3_64(&b[start..i]);
                let slot = &mut self.recent[h as usize % RECENT];
                // An empty slot holds 0, so a hash of 0 is always inserted.
                if *slot != h || h == 0 {
                    *slot = h;
                    self.hashes.insert(h);
                }
            }
        }
    }

    pub(crate) fn build(&mut self, bits_per_key: u32) -> TokenFilter {
        let mut filter = TokenFilter::with_capacity(self.hashes.len(), bits_per_key);
        for h in self.hashes.drain() {
            filter.insert(h);
        }
        // The next row group starts with its own set: a hash remembered here is not in it.
        self.recent.fill(0);
        filter
    }
}

/// The keys are already xxh3 hashes; hashing them again would only cost time.
#[derive(Default)]
pub(crate) struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_required_tokens() {
        let mut t = Vec::new();
        for_each_token("GET /api/v1?x=12 ok_go naïve", |s| t.push(s.to_string()));
        assert_eq!(t, ["GET", "api", "v1", "x", "12", "ok_go", "naïve"]);
        // "nnection refused by" may sit inside "connection refused by_x": only "refused" is certain.
        assert_eq!(required_tokens("nnection refused by", true), vec![token_hash("refused")]);
        assert_eq!(required_tokens(" refused ", true), vec![token_hash("refused")]);
        assert_eq!(required_tokens("port 8080 ", false), Vec::<u64>::new());
        assert_eq!(required_tokens("port 8080 ", true), vec![token_hash("8080")]);
    }

    /// The collector's one-pass tokenizer and its table of recent hashes keep exactly the hashes of the
    /// tokens [`for_each_token`] finds (numbers only when asked), row group after row group.
    #[test]
    fn the_collector_keeps_exactly_the_tokens_of_its_text() {
        let words = ["GET", "api", "v1", "12", "0042", "ok_go", "naïve", "über", "x", "_", "Error", "3a"];
        let seps = [" ", "/", "?", "=", ", ", "-", ":", "\t"];
        let mut rng = crate::testutil::xorshift(0x243f_6a88_85a3_08d3u64);
        let mut next = move |n: usize| (rng() % n as u64) as usize;
        let mut c = TokenCollector::default();
        for index_numbers in [false, true] {
            for _ in 0..50 {
                let mut want = std::collections::HashSet::new();
                for _ in 0..200 {
                    let line: String = (0..next(12))
                        .map(|_| format!("{}{}", words[next(words.len())], seps[next(seps.len())]))
                        .collect();
                    for_each_token(&line, |t| {
                        if index_numbers || !is_number(t) {
                            want.insert(token_hash(t));
                        }
                    });
                    c.add_text(&line, index_numbers);
                }
                assert_eq!(c.hashes, want.iter().copied().collect());
                c.build(10);
                assert!(c.hashes.is_empty());
            }
        }
    }

    #[test]
    fn filter_has_no_false_negatives_and_few_false_positives() {
        let mut c = TokenCollector::default();
        for i in 0..10_000 {
            c.add_text(&format!("word{i} shared"), true);
        }
        let f = c.build(10);
        let f = TokenFilter::from_bytes(&f.to_bytes()).unwrap();
        assert!((0..10_000).all(|i| f.may_contain(token_hash(&format!("word{i}")))));
        let false_pos = (0..10_000).filter(|i| f.may_contain(token_hash(&format!("other{i}")))).count();
        assert!(false_pos < 300, "{false_pos} false positives in 10000");
    }
}
