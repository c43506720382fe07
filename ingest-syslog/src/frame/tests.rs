use super::*;

fn msg(s: &str) -> Frame {
    Frame::Message(Bytes::copy_from_slice(s.as_bytes()))
}

/// Feeds `input` in pieces of `chunk` bytes and collects every frame, then the one `finish` gives.
fn frames(max: usize, input: &[u8], chunk: usize) -> Vec<Frame> {
    let mut f = Framer::new(max);
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        f.push(piece);
        while let Some(frame) = f.next_frame() {
            out.push(frame);
        }
        assert!(f.buffered() <= max + MAX_COUNT_DIGITS + 1 + chunk, "buffer of {} bytes", f.buffered());
    }
    out.extend(f.finish());
    out
}

/// The same frames whatever the reads: one read, byte by byte, and odd sizes.
fn frames_any_split(max: usize, input: &[u8]) -> Vec<Frame> {
    let whole = frames(max, input, input.len());
    for chunk in [1, 2, 3, 7, 64] {
        assert_eq!(frames(max, input, chunk), whole, "split in reads of {chunk} bytes");
    }
    whole
}

#[test]
fn octet_counting_split_across_reads() {
    let input = b"11 <13>1 - - -26 <13>1 - h a - - - hello \xc3\xa9";
    assert_eq!(frames_any_split(1024, input), vec![msg("<13>1 - - -"), msg("<13>1 - h a - - - hello é")]);
}

#[test]
fn octet_counted_frames_may_hold_newlines_and_nuls() {
    let input = b"8 a\nb\0c\nd\n";
    assert_eq!(frames_any_split(1024, input), vec![Frame::Message(Bytes::from_static(b"a\nb\0c\nd\n"))]);
}

#[test]
fn lf_cr_lf_and_nul_delimited_split_across_reads() {
    let input = b"<13>one\n<13>two\r\n<13>three\0<13>four\n\n\n<13>last without a delimiter";
    assert_eq!(
        frames_any_split(1024, input),
        vec![msg("<13>one"), msg("<13>two"), msg("<13>three"), msg("<13>four"), msg("<13>last without a delimiter")]
    );
}

#[test]
fn framing_is_decided_per_frame() {
    // Octet counting, then a delimited frame, then octet counting again; a delimited frame that starts
    // with digits not followed by a space (an ISO timestamp without PRI) stays delimited.
    let input = b"5 <13>a<13>b\n5 <13>c2024-05-01T10:00:00Z h a: x\n";
    assert_eq!(
        frames_any_split(1024, input),
        vec![msg("<13>a"), msg("<13>b"), msg("<13>c"), msg("2024-05-01T10:00:00Z h a: x")]
    );
    // Eleven digits are not a count.
    assert_eq!(frames_any_split(1024, b"12345678901 x\n"), vec![msg("12345678901 x")]);
}

#[test]
fn an_oversized_octet_counted_frame_is_skipped_by_its_count() {
    let mut input = b"5 <13>a".to_vec();
    input.extend(format!("100 {}", "x".repeat(100)).as_bytes());
    input.extend(b"5 <13>b");
    assert_eq!(frames_any_split(64, &input), vec![msg("<13>a"), Frame::Oversized { bytes: 100 }, msg("<13>b")]);
}

#[test]
fn an_oversized_delimited_frame_is_skipped_to_its_delimiter() {
    let mut input = b"<13>a\n".to_vec();
    input.extend("y".repeat(200).as_bytes());
    input.extend(b"\n<13>b\n");
    let got = frames(64, &input, 1);
    assert_eq!(got, vec![msg("<13>a"), Frame::Oversized { bytes: 65 }, msg("<13>b")]);
    // Arriving at once it is measured whole.
    let got = frames(64, &input, input.len());
    assert_eq!(got, vec![msg("<13>a"), Frame::Oversized { bytes: 200 }, msg("<13>b")]);
    // Reported once, however long it goes on, and the buffer stays bounded (checked in `frames`).
    let mut input = "z".repeat(10_000).into_bytes();
    input.extend(b"\n<13>c\n");
    let got = frames(64, &input, 100);
    assert_eq!(got, vec![Frame::Oversized { bytes: 100 }, msg("<13>c")]);
}

#[test]
fn the_end_of_the_stream() {
    // A half octet-counted frame comes back as truncated, with what arrived.
    assert_eq!(
        frames_any_split(1024, b"5 <13>a30 <13>1 - h"),
        vec![msg("<13>a"), Frame::Truncated { data: Bytes::from_static(b"<13>1 - h"), expected: 30 }]
    );
    // A count and nothing else, and an oversized frame cut short, leave nothing.
    assert_eq!(frames_any_split(1024, b"30 "), vec![]);
    assert_eq!(frames(8, b"300 xxxx", 8), vec![Frame::Oversized { bytes: 300 }]);
    // Digits without their space are a delimited frame.
    assert_eq!(frames_any_split(1024, b"30"), vec![msg("30")]);
    // Whitespace-only frames are nothing.
    assert_eq!(frames_any_split(1024, b"<13>a\n \r\n \t\n  "), vec![msg("<13>a")]);
}

#[test]
fn zero_length_frames_are_skipped() {
    assert_eq!(frames_any_split(1024, b"0 0 5 <13>a"), vec![msg("<13>a")]);
}

#[test]
fn random_input_never_panics_and_stays_bounded() {
    let mut seed = 0x5eed_u64;
    let alphabet = b"0123456789 \n\0\r<>abc";
    for round in 0..2_000 {
        let n = (round % 300) + 1;
        let input: Vec<u8> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                alphabet[(seed % alphabet.len() as u64) as usize]
            })
            .collect();
        let chunk = (round % 17) + 1;
        for frame in frames(32, &input, chunk) {
            if let Frame::Message(b) = frame {
                assert!(b.len() <= 32 && !b.is_empty());
            }
        }
    }
}
