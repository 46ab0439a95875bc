//! Lookups by record timestamp (ListOffsets): the batch holding the first record at or after
//! a timestamp, and the log's largest timestamp. Storage hands out whole batches; finding the
//! record inside one (decompressing it when needed) is the caller's, since storage knows
//! nothing of record formats beyond the batch header.

use super::{PartitionLog, ReadError};
use crate::frame::{BatchFrame, HEADER_BYTES};
use bytes::{Bytes, BytesMut};
use ringbroker_runtime::op;

impl PartitionLog {
    /// The first whole batch holding an offset at or above `offset_min` (and the log start)
    /// whose max timestamp is at or after `timestamp`: the first record at or after that
    /// timestamp, past `offset_min`, is in it unless every such record of it lies below
    /// `offset_min` (ask again from the batch's end then). `None` when no record is that
    /// recent.
    pub async fn batch_for_timestamp(
        &self,
        timestamp: i64,
        offset_min: i64,
    ) -> Result<Option<Bytes>, ReadError> {
        // Below this offset every batch was searched already. An offset, not a segment: a
        // cleaning may merge segments while the walk awaits, and the offsets after a searched
        // segment then sit in a merged one whose base is below them.
        let mut searched_to = i64::MIN;
        loop {
            let (log_fd, seg_base, mut position, end, from, seg_end) = {
                let st = self.state.borrow();
                let from = offset_min.max(st.log_start_offset).max(searched_to);
                let found = st.segments.iter().enumerate().find(|(i, s)| {
                    let end_offset = st
                        .segments
                        .get(i + 1)
                        .map_or(st.high_watermark, |n| n.base_offset);
                    s.max_timestamp >= timestamp && s.committed_bytes > 0 && end_offset > from
                });
                let Some((i, seg)) = found else {
                    return Ok(None);
                };
                let seg_end = st
                    .segments
                    .get(i + 1)
                    .map_or(st.high_watermark, |n| n.base_offset);
                let i = seg.time_index.partition_point(|&(t, _)| t < timestamp);
                let by_time = if i == 0 {
                    0
                } else {
                    seg.index.lookup(seg.time_index[i - 1].1) as u64
                };
                let by_offset = if from > seg.base_offset {
                    seg.index.lookup((from - seg.base_offset) as u32) as u64
                } else {
                    0
                };
                (
                    seg.log.clone(),
                    seg.base_offset,
                    by_time.max(by_offset),
                    seg.committed_bytes,
                    from,
                    seg_end,
                )
            };
            while position + HEADER_BYTES as u64 <= end {
                let header = op::read_exact_at(
                    &log_fd,
                    BytesMut::with_capacity(HEADER_BYTES),
                    position,
                    HEADER_BYTES,
                )
                .await?;
                let f = BatchFrame::parse(&header).ok_or(ReadError::Corrupt {
                    segment: seg_base,
                    position,
                })?;
                if f.max_timestamp >= timestamp && f.next_offset() > from {
                    let batch = op::read_exact_at(
                        &log_fd,
                        BytesMut::with_capacity(f.total_bytes),
                        position,
                        f.total_bytes,
                    )
                    .await?;
                    return Ok(Some(batch.freeze()));
                }
                position += f.total_bytes as u64;
            }
            searched_to = searched_to.max(seg_end);
        }
    }

    /// The largest record timestamp of the log (of its batches' max timestamps); `None` when
    /// the log is empty.
    pub fn max_timestamp(&self) -> Option<i64> {
        self.state
            .borrow()
            .segments
            .iter()
            .filter(|s| s.committed_bytes > 0)
            .map(|s| s.max_timestamp)
            .max()
    }
}
