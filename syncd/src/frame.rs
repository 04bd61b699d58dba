//! Wire framing: every message travels as one frame,
//! `length (u32 LE) ‖ version (u8) ‖ postcard payload`, where `length` counts the version byte
//! and the payload.
//!
//! Invariants: a length is checked against `FRAME_MAX` as soon as its four bytes are in, before
//! anything is allocated for the frame; the decoder never holds more than one frame plus what
//! the peer sent beyond it; malformed input (oversize or empty length, unknown version,
//! undecodable payload) is an error for the caller to end the session with — never a panic.
//! Pure: no I/O, fed with whatever bytes arrived.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 2;
/// Largest frame accepted: 16 MiB (body pieces are 512 KiB; batches are bounded by count, and
/// a dossier entering a scope travels in one).
pub const FRAME_MAX: usize = 16 << 20;
const LEN_BYTES: usize = 4;

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
}

/// Encodes one message as a frame.
pub fn encode<M: Serialize>(message: &M) -> Result<Vec<u8>, FrameError> {
    let payload = postcard::to_stdvec(message).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = payload.len() + 1;
    if len > FRAME_MAX {
        return Err(FrameError::TooLarge {
            len,
            max: FRAME_MAX,
        });
    }
    let mut out = Vec::with_capacity(LEN_BYTES + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reassembles frames from bytes as they arrive.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    received: u64,
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.received += bytes.len() as u64;
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
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnknownVersion(version));
        }
        let message =
            postcard::from_bytes(payload).map_err(|e| FrameError::Malformed(e.to_string()))?;
        self.buf.drain(..LEN_BYTES + len);
        Ok(Some(message))
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
        let mut d = FrameDecoder::new();
        d.push(&[3, 0, 0, 0, PROTOCOL_VERSION, 0xff, 0xff]);
        assert!(matches!(
            d.next_message::<Msg>(),
            Err(FrameError::Malformed(_))
        ));
    }

    fn arb_msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            (any::<u32>(), any::<u64>()).prop_map(|(site, cursor)| Msg::Hello { site, cursor }),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Msg::Chunk),
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
