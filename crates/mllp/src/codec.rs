//! MLLP framing: a `tokio_util` codec that turns a byte stream into frame payloads and back.
//!
//! A frame is `0x0B payload 0x1C 0x0D`. The decoder never blocks: it returns `Ok(None)`
//! ("incomplete") until a whole frame is buffered, and it never panics on any input.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::telemetry;

/// Start block: the byte that opens a frame.
pub const START_BLOCK: u8 = 0x0B;
/// First byte of the end block.
pub const END_BLOCK: u8 = 0x1C;
/// Second byte of the end block.
pub const CARRIAGE_RETURN: u8 = 0x0D;

/// Default largest payload accepted: 1 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1024 * 1024;

/// A framing error. `TooLarge` and `Truncated` are fatal for the connection: once a peer
/// breaks framing this way no later reply could be matched to its request reliably.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame grew beyond the configured limit before its end block arrived.
    #[error("frame exceeds the limit of {max} bytes")]
    TooLarge {
        /// The configured `max_frame_len`.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// The underlying transport failed.
    #[error("I/O error while framing: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// A short, stable label for metrics and logs (never contains frame data).
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "too_large",
            FrameError::Truncated => "truncated",
            FrameError::Io(_) => "io",
        }
    }
}

/// Counters a decoder keeps about what it saw; used by [`decode_all`] and exposed on [`MllpCodec`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Complete frames yielded.
    pub frames: u64,
    /// Bytes outside any frame that were dropped, including partial frames cut off by a nested start block.
    pub discarded_bytes: u64,
    /// Partial frames abandoned because a new start block arrived inside them.
    pub nested_starts: u64,
}

/// MLLP codec. Decodes into `Bytes` payloads (split off the read buffer without copying) and
/// encodes any `AsRef<[u8]>` payload into a frame.
#[derive(Debug, Clone)]
pub struct MllpCodec {
    max_frame_len: usize,
    in_frame: bool,
    /// Bytes of the current partial frame already searched for an end/start block, so a
    /// frame arriving in many small reads is scanned once overall, not once per read.
    scanned: usize,
    stats: DecodeStats,
    emit_metrics: bool,
}

impl Default for MllpCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl MllpCodec {
    /// A codec accepting payloads of at most `max_frame_len` bytes.
    pub fn new(max_frame_len: usize) -> Self {
        Self { max_frame_len, in_frame: false, scanned: 0, stats: DecodeStats::default(), emit_metrics: false }
    }

    /// Emit `mllp_*` metrics for discarded bytes and frame errors. The listener turns this on;
    /// the client leaves it off so outbound traffic does not inflate the listener's numbers.
    pub fn with_metrics(mut self, on: bool) -> Self {
        self.emit_metrics = on;
        self
    }

    /// The configured payload limit.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Whether a start block has been seen and its frame is not finished yet.
    pub fn in_frame(&self) -> bool {
        self.in_frame
    }

    /// Bytes dropped so far because they were outside any frame.
    pub fn discarded_bytes(&self) -> u64 {
        self.stats.discarded_bytes
    }

    /// Partial frames abandoned because of a nested start block.
    pub fn nested_starts(&self) -> u64 {
        self.stats.nested_starts
    }

    /// All counters.
    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    fn discard(&mut self, src: &mut BytesMut, n: usize) {
        if n == 0 {
            return;
        }
        src.advance(n);
        self.stats.discarded_bytes += n as u64;
        if self.emit_metrics {
            telemetry::discarded_bytes(n as u64);
        }
    }

    fn check_len(&self, payload_len: usize) -> Result<(), FrameError> {
        if payload_len > self.max_frame_len {
            if self.emit_metrics {
                telemetry::frame_error("too_large");
            }
            return Err(FrameError::TooLarge { max: self.max_frame_len });
        }
        Ok(())
    }
}

impl Decoder for MllpCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            if !self.in_frame {
                match memchr::memchr(START_BLOCK, src) {
                    None => {
                        let n = src.len();
                        self.discard(src, n);
                        return Ok(None);
                    }
                    Some(i) => {
                        self.discard(src, i);
                        // The start block itself is framing, not garbage.
                        src.advance(1);
                        self.in_frame = true;
                        self.scanned = 0;
                    }
                }
            }

            // In a frame: src[..scanned] is known to hold neither block.
            let start = self.scanned.min(src.len());
            match memchr::memchr2(END_BLOCK, START_BLOCK, &src[start..]).map(|i| i + start) {
                None => {
                    self.scanned = src.len();
                    self.check_len(src.len())?;
                    return Ok(None);
                }
                Some(j) if src[j] == START_BLOCK => {
                    // A sender that gave up on a frame and started over: drop the stale part so
                    // the new frame can still be answered.
                    self.stats.nested_starts += 1;
                    if self.emit_metrics {
                        telemetry::frame_error("nested_start");
                    }
                    self.discard(src, j);
                    src.advance(1);
                    self.scanned = 0;
                }
                Some(j) => {
                    self.check_len(j)?;
                    match src.get(j + 1) {
                        None => {
                            // The CR may still arrive; rescan from the 0x1C next time.
                            self.scanned = j;
                            return Ok(None);
                        }
                        Some(&CARRIAGE_RETURN) => {
                            let payload = src.split_to(j).freeze();
                            src.advance(2);
                            self.in_frame = false;
                            self.scanned = 0;
                            self.stats.frames += 1;
                            return Ok(Some(payload));
                        }
                        Some(_) => {
                            // A lone 0x1C is not an end block; keep it as payload rather than
                            // guess where the sender meant the frame to end.
                            self.scanned = j + 1;
                        }
                    }
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if self.in_frame {
            let n = src.len();
            src.advance(n);
            self.in_frame = false;
            self.scanned = 0;
            if self.emit_metrics {
                telemetry::frame_error("truncated");
            }
            return Err(FrameError::Truncated);
        }
        Ok(None)
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for MllpCodec {
    type Error = FrameError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(item.as_ref(), dst);
        Ok(())
    }
}

/// Append `payload` framed as MLLP to `dst`. The payload is written as is: a payload that
/// itself contains framing bytes is the caller's mistake and would confuse the receiver.
pub fn encode_frame(payload: &[u8], dst: &mut BytesMut) {
    dst.reserve(payload.len() + 3);
    dst.put_u8(START_BLOCK);
    dst.put_slice(payload);
    dst.put_u8(END_BLOCK);
    dst.put_u8(CARRIAGE_RETURN);
}

/// Decode every complete frame in `input` as if it were a whole stream, stopping at the first
/// fatal error. Never panics; meant for fuzz targets and offline tools.
///
/// Returns the frames decoded before any error, the counters, and the error if one ended the
/// stream (a frame still open at the end of `input` is [`FrameError::Truncated`]).
pub fn decode_all(input: &[u8], max_frame_len: usize) -> (Vec<Bytes>, DecodeStats, Option<FrameError>) {
    let mut codec = MllpCodec::new(max_frame_len);
    let mut buf = BytesMut::from(input);
    let mut frames = Vec::new();
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, codec.stats(), None),
            Err(e) => return (frames, codec.stats(), Some(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode_frame(payload, &mut b);
        b.to_vec()
    }

    /// Feed `input` split at `cut`, as two reads, and collect what comes out.
    fn decode_split(input: &[u8], cut: usize, max: usize) -> (Vec<Bytes>, Option<String>, DecodeStats) {
        let mut codec = MllpCodec::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in [&input[..cut], &input[cut..]] {
            buf.extend_from_slice(part);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(f)) => out.push(f),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e.reason().to_string()), codec.stats()),
                }
            }
        }
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(e) => return (out, Some(e.reason().to_string()), codec.stats()),
            }
        }
        (out, None, codec.stats())
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let mut input = b"noise".to_vec();
        input.extend(frame(b"MSH|^~\\&|A\rPID|1"));
        input.extend(frame(b""));
        input.extend(frame(b"second\x1cstill payload"));
        for cut in 0..=input.len() {
            let (frames, err, stats) = decode_split(&input, cut, 1024);
            assert_eq!(err, None, "cut {cut}");
            assert_eq!(
                frames,
                vec![
                    Bytes::from_static(b"MSH|^~\\&|A\rPID|1"),
                    Bytes::new(),
                    Bytes::from_static(b"second\x1cstill payload")
                ],
                "cut {cut}"
            );
            assert_eq!(stats.discarded_bytes, 5, "cut {cut}");
            assert_eq!(stats.frames, 3);
        }
    }

    #[test]
    fn every_byte_in_its_own_read() {
        let input = [frame(b"abc"), frame(b"defg")].concat();
        let mut codec = MllpCodec::new(16);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in input {
            buf.extend_from_slice(&[b]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defg")]);
        assert!(!codec.in_frame());
    }

    #[test]
    fn garbage_before_start_is_discarded_and_counted() {
        let mut input = b"\r\n\x1c\x0dGET / HTTP/1.1\r\n".to_vec();
        let garbage = input.len() as u64;
        input.extend(frame(b"hello"));
        input.extend_from_slice(b"trailing");
        let (frames, stats, err) = decode_all(&input, 1024);
        assert!(err.is_none());
        assert_eq!(frames, vec![Bytes::from_static(b"hello")]);
        assert_eq!(stats.discarded_bytes, garbage + 8);
    }

    #[test]
    fn nested_start_drops_partial_and_keeps_next_frame() {
        let mut input = vec![START_BLOCK];
        input.extend_from_slice(b"partial");
        input.extend(frame(b"whole"));
        let (frames, stats, err) = decode_all(&input, 1024);
        assert!(err.is_none());
        assert_eq!(frames, vec![Bytes::from_static(b"whole")]);
        assert_eq!(stats.nested_starts, 1);
        assert_eq!(stats.discarded_bytes, 7);
    }

    #[test]
    fn oversize_frame_is_an_error_even_before_its_end() {
        let mut codec = MllpCodec::new(4);
        let mut buf = BytesMut::from(&b"\x0b12345"[..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::TooLarge { max: 4 })));

        let (frames, _, err) = decode_all(&frame(b"12345"), 4);
        assert!(frames.is_empty());
        assert!(matches!(err, Some(FrameError::TooLarge { max: 4 })));

        let (frames, _, err) = decode_all(&frame(b"1234"), 4);
        assert_eq!(frames.len(), 1);
        assert!(err.is_none());
    }

    #[test]
    fn eof_mid_frame_is_truncated() {
        for input in [&b"\x0bhalf"[..], b"\x0b", b"\x0bhalf\x1c"] {
            let (frames, _, err) = decode_all(input, 1024);
            assert!(frames.is_empty());
            assert!(matches!(err, Some(FrameError::Truncated)), "{input:?}");
        }
        let (frames, _, err) = decode_all(b"only garbage", 1024);
        assert!(frames.is_empty() && err.is_none());
    }

    #[test]
    fn empty_payload() {
        let (frames, stats, err) = decode_all(b"\x0b\x1c\x0d\x0b\x1c\x0d", 0);
        assert!(err.is_none());
        assert_eq!(frames, vec![Bytes::new(), Bytes::new()]);
        assert_eq!(stats.frames, 2);
    }

    #[test]
    fn encoder_round_trips() {
        let mut codec = MllpCodec::new(1024);
        let mut buf = BytesMut::new();
        codec.encode(b"MSA|AA|1", &mut buf).unwrap();
        codec.encode(Bytes::from_static(b""), &mut buf).unwrap();
        assert_eq!(&buf[..], b"\x0bMSA|AA|1\x1c\x0d\x0b\x1c\x0d");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), Bytes::from_static(b"MSA|AA|1"));
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), Bytes::new());
        assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator (xorshift) biased towards framing bytes.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            let mut input = Vec::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                input.push(match state % 6 {
                    0 => START_BLOCK,
                    1 => END_BLOCK,
                    2 => CARRIAGE_RETURN,
                    _ => (state >> 8) as u8,
                });
            }
            let (frames, stats, _) = decode_all(&input, (state % 16) as usize);
            assert_eq!(frames.len() as u64, stats.frames);
            for cut in 0..=input.len() {
                let _ = decode_split(&input, cut, 8);
            }
        }
    }
}
