//! A bound on how deep a LogQL or PromQL query can make the trees its parser builds and its engine walks,
//! checked on the text before parsing: the nesting of parentheses plus the number of binary operators.
//! Every recursive step of the parsers and engines is a parenthesis or an operator, so a query within the
//! bound cannot overflow a thread's stack, however it is written (a chain of 100,000 `+`, 50,000 nested
//! `abs(`).

/// Most that a query's parenthesis nesting plus its binary operators may add up to.
pub const MAX_QUERY_DEPTH: usize = 256;

/// The nesting of `(` plus the binary operators (`+ - * / % ^`, comparisons, `and`/`or`/`unless`/`atan2`)
/// outside strings and outside `{...}` label matchers. It over-counts (a label filter's `=`, a `-` in an
/// offset), which only makes the bound safer.
pub fn query_depth(src: &str) -> usize {
    let b = src.as_bytes();
    let (mut depth, mut max_depth, mut ops, mut braces) = (0usize, 0usize, 0usize, 0usize);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    if b[i] == b'\\' && c != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'(' => {
                depth += 1;
                max_depth = max_depth.max(depth);
            }
            b')' => depth = depth.saturating_sub(1),
            b'{' => braces += 1,
            b'}' => braces = braces.saturating_sub(1),
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' if braces == 0 => ops += 1,
            b'=' | b'!' | b'>' | b'<' if braces == 0 => {
                ops += 1;
                if matches!(b.get(i + 1), Some(b'=' | b'~')) {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i + 1 < b.len() && (b[i + 1].is_ascii_alphanumeric() || b[i + 1] == b'_') {
                    i += 1;
                }
                let word = &src[start..=i];
                if braces == 0 && ["and", "or", "unless", "atan2"].iter().any(|w| word.eq_ignore_ascii_case(w)) {
                    ops += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    max_depth + ops
}

/// `Err` with a message naming the limit when `src` is over [`MAX_QUERY_DEPTH`].
///
/// # Errors
/// The message for a 400.
pub fn check(src: &str) -> Result<(), String> {
    let depth = query_depth(src);
    if depth > MAX_QUERY_DEPTH {
        return Err(format!(
            "the query nests parentheses and chains binary operators {depth} deep (nesting plus operators), over \
             the limit of {MAX_QUERY_DEPTH}; split it into smaller queries"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_nesting_and_operators_not_strings_or_matchers() {
        assert_eq!(query_depth(r#"sum(rate({app="a", b!="c"} |= "x+y" [5m]))"#), 2 + 1);
        assert_eq!(query_depth("a + b * c"), 2);
        assert_eq!(query_depth("a and b or c unless d"), 3);
        assert_eq!(query_depth(r#"{a=~"(((("} | json | x > 1"#), 1);
        assert_eq!(query_depth(&"abs(".repeat(300)), 300);
        assert!(check(&format!("1{}", " + 1".repeat(255))).is_ok());
        assert!(check(&format!("1{}", " + 1".repeat(300))).unwrap_err().contains("over the limit of 256"));
        // An unterminated string ends the scan without panicking.
        assert_eq!(query_depth(r#"{a="(((("#), 0);
    }
}
