//! Frames: a big-endian i32 size, then that many bytes. The size is checked against
//! `frame_bytes_max` before the receive buffer grows for it.

use bytes::{Buf, Bytes, BytesMut};

/// Default upper bound of one request frame (Kafka's `socket.request.max.bytes` is 100 MiB).
pub const FRAME_BYTES_MAX_DEFAULT: usize = 100 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame size {0} is negative")]
    Negative(i32),
    #[error("frame size {size} exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
}

/// The outcome of looking at the front of a receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A whole frame body (without its size prefix), split off the buffer.
    Frame(Bytes),
    /// More bytes are needed; `total` is the full length (prefix included) of the frame in
    /// progress when its size is known, so the caller can reserve exactly that.
    NeedMore { total: Option<usize> },
}

/// Splits the next complete frame off `buf`, or says how much is missing.
pub fn next_frame(buf: &mut BytesMut, frame_bytes_max: usize) -> Result<Next, FrameError> {
    if buf.len() < 4 {
        return Ok(Next::NeedMore { total: None });
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if size < 0 {
        return Err(FrameError::Negative(size));
    }
    let size = size as usize;
    if size > frame_bytes_max {
        return Err(FrameError::TooLarge {
            size,
            max: frame_bytes_max,
        });
    }
    if buf.len() < 4 + size {
        return Ok(Next::NeedMore {
            total: Some(4 + size),
        });
    }
    let mut frame = buf.split_to(4 + size);
    frame.advance(4);
    Ok(Next::Frame(frame.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framed(bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            out.extend_from_slice(&(b.len() as i32).to_be_bytes());
            out.extend_from_slice(b);
        }
        out
    }

    #[test]
    fn rejects_negative_and_oversized_sizes_before_buffering() {
        let mut buf = BytesMut::from(&(-1i32).to_be_bytes()[..]);
        assert_eq!(next_frame(&mut buf, 100), Err(FrameError::Negative(-1)));
        let mut buf = BytesMut::from(&101i32.to_be_bytes()[..]);
        assert_eq!(
            next_frame(&mut buf, 100),
            Err(FrameError::TooLarge {
                size: 101,
                max: 100
            })
        );
    }

    #[test]
    fn reports_the_total_needed() {
        let mut buf = BytesMut::from(&framed(&[vec![7; 10]])[..7]);
        assert_eq!(
            next_frame(&mut buf, 100),
            Ok(Next::NeedMore { total: Some(14) })
        );
    }

    proptest! {
        /// However the byte stream is cut into reads, the same frames come out, in order.
        #[test]
        fn any_split_yields_the_same_frames(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            cuts in proptest::collection::vec(1usize..97, 0..40),
        ) {
            let stream = framed(&bodies);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut pos = 0;
            let mut cut_iter = cuts.into_iter().cycle();
            while pos < stream.len() {
                let n = cut_iter.next().unwrap_or(stream.len()).min(stream.len() - pos);
                buf.extend_from_slice(&stream[pos..pos + n]);
                pos += n;
                while let Next::Frame(f) = next_frame(&mut buf, 1000).unwrap() {
                    got.push(f.to_vec());
                }
            }
            prop_assert_eq!(got, bodies);
            prop_assert!(buf.is_empty());
        }
    }
}
