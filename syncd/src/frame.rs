//! Wire framing: every message travels as one frame,
//! `length (u32 LE) ‖ version (u8) ‖ payload`, where `length` counts the version byte and the
//! payload, and the payload is the postcard message — compressed with zstd when that pays
//! (`COMPRESSED` set in the version byte): documents' metadata shrinks to a quarter, trace
//! entries to two fifths, text bodies too; bodies already compressed (PDF, JPEG, DICOM)
//! travel as they are. On a link faster than the compressor (`Compression::for_link`: a LAN,
//! loopback) nothing is compressed: there the CPU costs more time than the bytes saved.
//!
//! Invariants: a length is checked against `FRAME_MAX` as soon as its four bytes are in, before
//! anything is allocated for the frame; a compressed payload must state its decompressed size,
//! at most `FRAME_MAX`, before anything is allocated for it, and decompress to exactly that;
//! the decoder never holds more than one frame plus what the peer sent beyond it (nor keeps
//! room, once a frame is decoded, for more than twice the larger of what it still holds and
//! `ROOM_KEPT`), and the decoders sharing a `Budget` (a connection's streams) refuse to go on
//! once they hold more than its limit together; malformed input (oversize or empty length,
//! unknown version, undecodable payload) is an error for the caller to end the session with —
//! never a panic. Pure: no I/O, fed with whatever bytes arrived.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 2;
/// Set in the version byte of a frame whose payload is compressed (zstd).
pub const COMPRESSED: u8 = 0x80;
/// Payloads shorter than this travel as they are (an acknowledgement gains nothing).
const COMPRESS_FROM: usize = 512;
/// Bytes a compressed payload must save to be sent compressed.
const COMPRESS_GAIN: usize = 256;
/// zstd's level: fast enough for a fast link (hundreds of MB/s), most of the gain on a slow one.
const COMPRESS_LEVEL: i32 = 3;
/// Links at least this fast (bytes per second) get no compression. zstd at `COMPRESS_LEVEL`
/// reads about 500 MB/s of a push's mix on the CI machine and saves some 4 % of a frame of
/// incompressible bodies (its metadata): compressing S bytes costs S / 500 MB/s of CPU and
/// saves 0.04 × S / rate of link time, so it pays below about 20 MB/s (and below 350 MB/s for
/// a frame of metadata, which shrinks to a quarter). 32 MB/s (256 Mbit/s) keeps it on every
/// WAN link a site has, and off on loopback and fast LANs, where both ends' CPU is the bound.
const COMPRESS_BELOW_RATE: f64 = 32e6;

/// Whether a frame's payload is compressed when that saves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Compressed when that saves `COMPRESS_GAIN` bytes or more (a slow link).
    WhenItPays,
    /// Sent as it is (a link faster than the compressor).
    Never,
}

impl Compression {
    /// For a link that moves at most `window_bytes` per `rtt` (QUIC's congestion window and
    /// round trip: an upper bound of its rate). A round trip of zero counts as a fast link.
    pub fn for_link(window_bytes: u64, rtt: std::time::Duration) -> Self {
        let seconds = rtt.as_secs_f64();
        if seconds > 0.0 && (window_bytes as f64) / seconds < COMPRESS_BELOW_RATE {
            Compression::WhenItPays
        } else {
            Compression::Never
        }
    }
}
/// Largest frame accepted: 16 MiB (body pieces are 512 KiB; batches are bounded by count, and
/// a dossier entering a scope travels in one).
pub const FRAME_MAX: usize = 16 << 20;
const LEN_BYTES: usize = 4;
/// Room a decoder keeps once a large frame is decoded: a push of 128 documents of 4 KiB fits,
/// so a sync's run of such frames reuses it; what a larger frame took is given back, or a
/// session's streams would each keep up to `FRAME_MAX` for as long as they live, outside any
/// budget.
const ROOM_KEPT: usize = 1 << 20;

/// Why a frame was refused. Each ends the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The announced length exceeds `FRAME_MAX`.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A frame with no version byte.
    #[error("empty frame")]
    Empty,
    /// A version this build does not speak.
    #[error("unknown protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnknownVersion(u8),
    /// The payload does not decode as the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The payload ends before the message does: a damaged frame, or a peer of an earlier build
    /// whose message lacks a field this build appended (PROTOCOL.md, "Messages on the wire":
    /// the host is upgraded before its sites).
    #[error(
        "a message ended before this build's would: the peer may run an earlier Carnet (hosts are upgraded before their sites), or the frame was damaged"
    )]
    EndsEarly,
    /// The decoders sharing a `Budget` hold more than its limit.
    #[error(
        "the peer's streams hold more than {0} bytes of frames not yet whole and messages not yet applied"
    )]
    OverBudget(usize),
}

/// Bytes the decoders of one peer's connection may hold together (`FrameDecoder::within`),
/// with the messages they decoded while those are held (`Hold`): each stream may hold a frame
/// of up to `FRAME_MAX`, and a peer may open many streams. A decoder checks the limit before
/// it decodes: each may go past it by the message it decodes then.
#[derive(Debug)]
pub struct Budget {
    held: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes, shared by the decoders given it.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            held: AtomicUsize::new(0),
            limit,
        })
    }

    fn charge(&self, bytes: usize) {
        self.held.fetch_add(bytes, Ordering::Relaxed);
    }

    fn refund(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn exceeded(&self) -> bool {
        self.held.load(Ordering::Relaxed) > self.limit
    }
}

/// Encodes one message as a frame, its payload compressed when that saves `COMPRESS_GAIN`
/// bytes or more (the receiver decompresses at a GB/s: any saving on the link is worth it).
pub fn encode<M: Serialize>(message: &M) -> Result<Vec<u8>, FrameError> {
    encode_with(message, Compression::WhenItPays)
}

/// Encodes one message as a frame, compressed as `compression` says.
pub fn encode_with<M: Serialize>(
    message: &M,
    compression: Compression,
) -> Result<Vec<u8>, FrameError> {
    let malformed = |e: postcard::Error| FrameError::Malformed(e.to_string());
    // The payload is written once, after room for the length and the version, into a frame
    // of its exact size (a push carries half a megabyte of bodies: no growing, no copy).
    let size = postcard::serialize_with_flavor(message, postcard::ser_flavors::Size::default())
        .map_err(malformed)?;
    if size + 1 > FRAME_MAX {
        return Err(FrameError::TooLarge {
            len: size + 1,
            max: FRAME_MAX,
        });
    }
    let mut frame = Vec::with_capacity(LEN_BYTES + 1 + size);
    frame.extend_from_slice(&[0; LEN_BYTES + 1]);
    let mut frame = postcard::to_extend(message, frame).map_err(malformed)?;
    let payload = &frame[LEN_BYTES + 1..];
    let compressed = (compression == Compression::WhenItPays && payload.len() >= COMPRESS_FROM)
        .then(|| zstd::bulk::compress(payload, COMPRESS_LEVEL).ok())
        .flatten()
        .filter(|c| c.len() + COMPRESS_GAIN <= payload.len());
    let version = match compressed {
        Some(c) => {
            // A frame of the compressed size: quinn holds a frame until it is acknowledged,
            // and the room of the uncompressed payload would stay with it.
            let mut small = Vec::with_capacity(LEN_BYTES + 1 + c.len());
            small.extend_from_slice(&frame[..LEN_BYTES + 1]);
            small.extend_from_slice(&c);
            frame = small;
            PROTOCOL_VERSION | COMPRESSED
        }
        None => PROTOCOL_VERSION,
    };
    let len = frame.len() - LEN_BYTES;
    frame[..LEN_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
    frame[LEN_BYTES] = version;
    Ok(frame)
}

/// A compressed payload's postcard bytes: its stated size at most `FRAME_MAX`, and exactly
/// that many once decompressed.
fn decompress(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let malformed = |why: &str| FrameError::Malformed(format!("compressed payload: {why}"));
    let size = match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(size)) => usize::try_from(size).unwrap_or(usize::MAX),
        Ok(None) => return Err(malformed("no size stated")),
        Err(_) => return Err(malformed("not a zstd frame")),
    };
    if size > FRAME_MAX {
        return Err(FrameError::TooLarge {
            len: size,
            max: FRAME_MAX,
        });
    }
    let plain = zstd::bulk::decompress(payload, size).map_err(|e| malformed(&e.to_string()))?;
    if plain.len() != size {
        return Err(malformed("shorter than stated"));
    }
    Ok(plain)
}

/// Reassembles frames from bytes as they arrive.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    received: u64,
    /// The budget this decoder's buffered bytes are charged to, if any.
    budget: Option<Arc<Budget>>,
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder whose buffered bytes count against `budget`, with those of the other decoders
    /// given it: `next_message` fails while they hold more than its limit together.
    pub fn within(budget: Arc<Budget>) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            received: 0,
            budget: Some(budget),
        }
    }

    /// Appends bytes received from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.received += bytes.len() as u64;
        if let Some(budget) = &self.budget {
            budget.charge(bytes.len());
        }
    }

    /// Bytes pushed so far (for logs).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `None` if more bytes are needed, or the error that ends the
    /// session. An oversize length is refused as soon as it is read.
    pub fn next_message<M: DeserializeOwned>(&mut self) -> Result<Option<M>, FrameError> {
        Ok(self.next_held()?.map(|(message, _)| message))
    }

    /// As `next_message`, with what keeps the message counted against this decoder's budget
    /// (`Hold`): its frame's bytes, as while it was buffered, and its payload decompressed, if
    /// it came compressed. A message read ahead of its turn holds them until the hold is
    /// dropped (the host's, once the message is applied).
    pub fn next_held<M: DeserializeOwned>(&mut self) -> Result<Option<(M, Hold)>, FrameError> {
        if let Some(budget) = &self.budget
            && budget.exceeded()
        {
            return Err(FrameError::OverBudget(budget.limit));
        }
        let Some(len_bytes) = self.buf.first_chunk::<LEN_BYTES>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*len_bytes) as usize;
        if len > FRAME_MAX {
            return Err(FrameError::TooLarge {
                len,
                max: FRAME_MAX,
            });
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        let Some(frame) = self.buf.get(LEN_BYTES..LEN_BYTES + len) else {
            return Ok(None);
        };
        let (version, payload) = (frame[0], &frame[1..]);
        let plain;
        let payload = match version {
            PROTOCOL_VERSION => payload,
            v if v == PROTOCOL_VERSION | COMPRESSED => {
                plain = decompress(payload)?;
                &plain[..]
            }
            _ => return Err(FrameError::UnknownVersion(version & !COMPRESSED)),
        };
        let message = postcard::from_bytes(payload).map_err(|e| match e {
            postcard::Error::DeserializeUnexpectedEnd => FrameError::EndsEarly,
            e => FrameError::Malformed(e.to_string()),
        })?;
        let decompressed = if version & COMPRESSED == 0 {
            0
        } else {
            payload.len()
        };
        self.buf.drain(..LEN_BYTES + len);
        if self.buf.capacity() > 2 * ROOM_KEPT.max(self.buf.len()) {
            self.buf.shrink_to(ROOM_KEPT.max(self.buf.len()));
        }
        // The frame's charge passes to the hold, with the decompressed payload's.
        if let Some(budget) = &self.budget {
            budget.charge(decompressed);
        }
        let hold = Hold {
            budget: self.budget.clone(),
            bytes: LEN_BYTES + len + decompressed,
        };
        Ok(Some((message, hold)))
    }
}

/// A decoded message's bytes, counted against its decoder's `Budget` until this is dropped.
#[derive(Debug)]
pub struct Hold {
    budget: Option<Arc<Budget>>,
    bytes: usize,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.refund(self.bytes);
        }
    }
}

impl Drop for FrameDecoder {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.refund(self.buf.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Hello { site: u32, cursor: u64 },
        Chunk(Vec<u8>),
    }

    #[test]
    fn oversize_lengths_are_refused_before_the_body_arrives() {
        let mut d = FrameDecoder::new();
        d.push(&((FRAME_MAX as u32) + 1).to_le_bytes());
        assert_eq!(
            d.next_message::<Msg>(),
            Err(FrameError::TooLarge {
                len: FRAME_MAX + 1,
                max: FRAME_MAX
            })
        );
        let big = Msg::Chunk(vec![0; FRAME_MAX]);
        assert!(matches!(encode(&big), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn versions_and_empty_frames_are_checked() {
        let mut frame = encode(&Msg::Hello { site: 1, cursor: 2 }).expect("encode");
        frame[4] = 9;
        let mut d = FrameDecoder::new();
        d.push(&frame);
        assert_eq!(d.next_message::<Msg>(), Err(FrameError::UnknownVersion(9)));
        let mut d = FrameDecoder::new();
        d.push(&[0, 0, 0, 0]);
        assert_eq!(d.next_message::<Msg>(), Err(FrameError::Empty));
        // A variant that does not exist; a variant number cut short.
        let mut d = FrameDecoder::new();
        d.push(&[2, 0, 0, 0, PROTOCOL_VERSION, 0x7f]);
        assert!(matches!(
            d.next_message::<Msg>(),
            Err(FrameError::Malformed(_))
        ));
        let mut d = FrameDecoder::new();
        d.push(&[3, 0, 0, 0, PROTOCOL_VERSION, 0xff, 0xff]);
        assert_eq!(d.next_message::<Msg>(), Err(FrameError::EndsEarly));
    }

    #[test]
    fn decoders_sharing_a_budget_refuse_to_go_on_past_it_and_give_back_what_they_held() {
        let budget = Budget::new(100);
        // Each announces a frame of 1,000 bytes and holds 60 of it.
        let partial = |d: &mut FrameDecoder| {
            d.push(&1000u32.to_le_bytes());
            d.push(&[0; 56]);
        };
        let (mut first, mut second) = (
            FrameDecoder::within(budget.clone()),
            FrameDecoder::within(budget.clone()),
        );
        partial(&mut first);
        assert_eq!(first.next_message::<Msg>(), Ok(None), "60 of 100");
        partial(&mut second);
        assert_eq!(
            second.next_message::<Msg>(),
            Err(FrameError::OverBudget(100))
        );
        assert_eq!(
            first.next_message::<Msg>(),
            Err(FrameError::OverBudget(100))
        );
        // A decoder that goes gives back what it held; one that decodes, what it decoded.
        drop(first);
        assert_eq!(second.next_message::<Msg>(), Ok(None));
        let mut third = FrameDecoder::within(budget.clone());
        let hello = Msg::Hello { site: 1, cursor: 2 };
        for _ in 0..20 {
            third.push(&encode(&hello).expect("encode"));
            assert_eq!(third.next_message::<Msg>(), Ok(Some(hello.clone())));
        }
        drop(second);
        assert_eq!(
            budget.held.load(Ordering::Relaxed),
            0,
            "everything given back"
        );
    }

    #[test]
    fn a_message_read_ahead_holds_its_frame_and_what_it_decompressed_to_until_dropped() {
        // 9,600 bytes once decompressed, well under 1,000 on the wire.
        let text = Msg::Chunk(b"<ClinicalDocument>observation</ClinicalDocument>".repeat(200));
        let frame = encode(&text).expect("encode");
        assert_eq!(frame[4], PROTOCOL_VERSION | COMPRESSED);
        let plain = postcard::to_stdvec(&text).expect("postcard").len();
        let budget = Budget::new(plain + frame.len());
        let held = || budget.held.load(Ordering::Relaxed);
        let mut ahead = FrameDecoder::within(budget.clone());
        ahead.push(&frame);
        let (message, hold) = ahead.next_held::<Msg>().expect("decodes").expect("whole");
        assert_eq!(message, text);
        assert_eq!(
            held(),
            frame.len() + plain,
            "the frame and its payload decompressed"
        );
        // Up to the limit, not past it: another decoder sharing the budget is refused.
        let mut other = FrameDecoder::within(budget.clone());
        other.push(&[0]);
        assert_eq!(
            other.next_message::<Msg>(),
            Err(FrameError::OverBudget(plain + frame.len()))
        );
        drop(other);
        drop(hold);
        assert_eq!(held(), 0, "given back once the message is done with");
        // `next_message` gives its message's back at once.
        ahead.push(&frame);
        assert_eq!(ahead.next_message::<Msg>(), Ok(Some(text)));
        assert_eq!(held(), 0);
    }

    #[test]
    fn a_decoder_gives_back_the_room_a_large_frame_took() {
        let large = Msg::Chunk(vec![7; 8 << 20]);
        let small = Msg::Hello { site: 1, cursor: 2 };
        let mut decoder = FrameDecoder::new();
        // As a stream receives it: in packets.
        for packet in encode_with(&large, Compression::Never)
            .expect("encode")
            .chunks(1200)
        {
            decoder.push(packet);
        }
        assert!(decoder.buf.capacity() >= 8 << 20);
        assert_eq!(decoder.next_message::<Msg>(), Ok(Some(large.clone())));
        assert!(
            decoder.buf.capacity() <= 2 * ROOM_KEPT,
            "{} bytes kept after the frame",
            decoder.buf.capacity()
        );
        // A run of frames of a usual push's size reuses what it kept.
        let push = Msg::Chunk(vec![7; 600 << 10]);
        let frame = encode_with(&push, Compression::Never).expect("encode");
        decoder.push(&frame);
        assert_eq!(decoder.next_message::<Msg>(), Ok(Some(push.clone())));
        let kept = decoder.buf.as_ptr();
        decoder.push(&frame);
        assert_eq!(decoder.next_message::<Msg>(), Ok(Some(push)));
        assert_eq!(
            decoder.buf.as_ptr(),
            kept,
            "the room is kept between such frames"
        );
        decoder.push(&encode(&small).expect("encode"));
        assert_eq!(decoder.next_message::<Msg>(), Ok(Some(small.clone())));
        // What came after a large frame in the same packets stays, and decodes.
        let mut packets = encode_with(&large, Compression::Never).expect("encode");
        let next = encode(&small).expect("encode");
        packets.extend_from_slice(&next[..3]);
        decoder.push(&packets);
        assert_eq!(decoder.next_message::<Msg>(), Ok(Some(large)));
        assert!(decoder.buf.capacity() <= 2 * ROOM_KEPT);
        assert_eq!(decoder.next_message::<Msg>(), Ok(None), "half a frame");
        decoder.push(&next[3..]);
        assert_eq!(decoder.next_message::<Msg>(), Ok(Some(small)));
    }

    #[test]
    fn what_compresses_travels_compressed_and_the_rest_as_it_is() {
        let text = Msg::Chunk(b"<ClinicalDocument>observation</ClinicalDocument>".repeat(200));
        let frame = encode(&text).expect("encode");
        assert_eq!(frame[4], PROTOCOL_VERSION | COMPRESSED);
        assert!(frame.len() < 1000, "{} bytes", frame.len());
        assert!(
            frame.capacity() < 1000,
            "the frame keeps room for {} bytes",
            frame.capacity()
        );
        // Already compressed (random bytes stand for a JPEG): sent as it is, and so is a
        // message too small to gain anything.
        let mut seed = 7u64;
        let noise: Vec<u8> = (0..20_000)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 56) as u8
            })
            .collect();
        let jpeg = Msg::Chunk(noise);
        let small = Msg::Chunk(vec![0; 100]);
        for m in [&jpeg, &small] {
            assert_eq!(encode(m).expect("encode")[4], PROTOCOL_VERSION);
        }
        let mut d = FrameDecoder::new();
        for m in [&text, &jpeg, &small] {
            d.push(&encode(m).expect("encode"));
        }
        for m in [text, jpeg, small] {
            assert_eq!(d.next_message::<Msg>(), Ok(Some(m)));
        }
    }

    /// A slow link gets compressed frames; a link faster than the compressor gets them as
    /// they are, which decode the same.
    #[test]
    fn only_a_slow_link_gets_compressed_frames() {
        use std::time::Duration;
        let rural = Compression::for_link(75_000, Duration::from_millis(300));
        let loopback = Compression::for_link(2_000_000, Duration::from_micros(200));
        let lan = Compression::for_link(200_000, Duration::from_millis(1));
        assert_eq!(rural, Compression::WhenItPays);
        assert_eq!(loopback, Compression::Never);
        assert_eq!(lan, Compression::Never);
        assert_eq!(
            Compression::for_link(14_720, Duration::ZERO),
            Compression::Never
        );
        let text = Msg::Chunk(b"<ClinicalDocument>observation</ClinicalDocument>".repeat(200));
        let slow = encode_with(&text, rural).expect("encode");
        let fast = encode_with(&text, loopback).expect("encode");
        assert_eq!(slow[4], PROTOCOL_VERSION | COMPRESSED);
        assert_eq!(fast[4], PROTOCOL_VERSION);
        assert!(fast.len() > 10 * slow.len());
        let mut d = FrameDecoder::new();
        d.push(&slow);
        d.push(&fast);
        assert_eq!(d.next_message::<Msg>(), Ok(Some(text.clone())));
        assert_eq!(d.next_message::<Msg>(), Ok(Some(text)));
    }

    /// A frame whose compressed payload says it would grow past `FRAME_MAX`, says nothing of
    /// its size, or is not what it says, is refused before it is decompressed.
    #[test]
    fn a_compressed_payload_must_state_a_bounded_size_and_keep_to_it() {
        let frame_of = |payload: &[u8]| {
            let mut f = ((payload.len() + 1) as u32).to_le_bytes().to_vec();
            f.push(PROTOCOL_VERSION | COMPRESSED);
            f.extend_from_slice(payload);
            f
        };
        let decode = |frame: Vec<u8>| {
            let mut d = FrameDecoder::new();
            d.push(&frame);
            d.next_message::<Msg>()
        };
        let bomb = zstd::bulk::compress(&vec![0u8; FRAME_MAX + 1], 1).expect("compress");
        assert!(bomb.len() < 10_000);
        assert!(matches!(
            decode(frame_of(&bomb)),
            Err(FrameError::TooLarge { .. })
        ));
        // The same payload from a stream encoder, which states no size.
        let plain = postcard::to_stdvec(&Msg::Chunk(vec![1; 4000])).expect("postcard");
        let mut unsized_ = Vec::new();
        let mut encoder = zstd::stream::Encoder::new(&mut unsized_, 3).expect("encoder");
        std::io::Write::write_all(&mut encoder, &plain).expect("write");
        encoder.finish().expect("finish");
        assert!(matches!(
            decode(frame_of(&unsized_)),
            Err(FrameError::Malformed(_))
        ));
        let sized = zstd::bulk::compress(&plain, 3).expect("compress");
        assert_eq!(
            decode(frame_of(&sized)),
            Ok(Some(Msg::Chunk(vec![1; 4000])))
        );
        // Cut short, or not zstd at all.
        assert!(matches!(
            decode(frame_of(&sized[..sized.len() - 3])),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decode(frame_of(&plain)),
            Err(FrameError::Malformed(_))
        ));
        // Another version, compressed or not, is another version.
        let mut other = frame_of(&sized);
        other[4] = 3 | COMPRESSED;
        assert_eq!(decode(other), Err(FrameError::UnknownVersion(3)));
    }

    fn arb_msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            (any::<u32>(), any::<u64>()).prop_map(|(site, cursor)| Msg::Hello { site, cursor }),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Msg::Chunk),
            // Long enough to be compressed.
            (any::<u8>(), 512usize..3000).prop_map(|(b, n)| Msg::Chunk(vec![b; n])),
        ]
    }

    proptest! {
        #[test]
        fn frames_survive_any_split(
            msgs in proptest::collection::vec(arb_msg(), 1..8),
            cut in 1usize..50,
        ) {
            let bytes: Vec<u8> = msgs.iter().flat_map(|m| encode(m).expect("encode")).collect();
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in bytes.chunks(cut) {
                d.push(piece);
                while let Some(m) = d.next_message::<Msg>().expect("valid frames") {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, msgs);
            prop_assert_eq!(d.buffered(), 0);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut d = FrameDecoder::new();
            d.push(&bytes);
            for _ in 0..64 {
                match d.next_message::<Msg>() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
