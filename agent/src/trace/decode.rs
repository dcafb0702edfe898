//! Decoding ring-buffer records into [`Record`]s.
//!
//! Records are the `#[repr(C)]` structs of `agent_common::event`, so
//! decoding is a size check and an unaligned copy. A record of an
//! unexpected size is reported, never guessed at.

use agent_common::event::{Event, KIND_NCCL, KIND_STACK, NcclEvent, NcclTail, StackEvent};

/// A decoded ring-buffer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An event without a stack.
    Event(Event),
    /// An event with the user stack (innermost frame first).
    WithStack(Event, Vec<u64>),
    /// An NCCL call with what it says beyond the event's columns.
    Nccl(Event, NcclTail),
}

/// A ring-buffer record too short for the layout its kind announces;
/// holds the record's length in bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "ring buffer record of {0} bytes matches no known layout (kernel and user space built from different sources?)"
)]
pub struct DecodeError(pub usize);

/// Decodes one ring-buffer record: an event, or an event with its user
/// stack when its kind is `KIND_STACK`. Bytes past the layout are ignored.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() < size_of::<Event>() {
        return Err(DecodeError(bytes.len()));
    }
    // SAFETY: at least size_of::<Event>() bytes; Event is plain data for
    // which every bit pattern is valid.
    let event: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if event.kind == KIND_NCCL {
        if bytes.len() < size_of::<NcclEvent>() {
            return Err(DecodeError(bytes.len()));
        }
        // SAFETY: as above, for NcclEvent.
        let full: NcclEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        return Ok(Record::Nccl(event, full.tail));
    }
    if event.kind != KIND_STACK {
        return Ok(Record::Event(event));
    }
    if bytes.len() < size_of::<StackEvent>() {
        return Err(DecodeError(bytes.len()));
    }
    // SAFETY: as above, for StackEvent.
    let full: StackEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let depth = (full.stack.depth as usize).min(full.stack.ips.len());
    Ok(Record::WithStack(event, full.stack.ips[..depth].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::event::{MAX_STACK_DEPTH, StackTail};

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-data value.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref::<T>(v).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn plain_and_stack_records_round_trip() {
        let event = Event {
            ts_ns: 5,
            duration_ns: 7,
            pid: 1,
            tid: 2,
            source: 4,
            op: 1,
            ..Event::default()
        };
        assert_eq!(decode(&bytes_of(&event)), Ok(Record::Event(event)));

        let mut ips = [0u64; MAX_STACK_DEPTH];
        ips[..3].copy_from_slice(&[0x10, 0x20, 0x30]);
        let with = StackEvent {
            event: Event {
                kind: KIND_STACK,
                ..event
            },
            stack: StackTail { depth: 3, ips },
        };
        match decode(&bytes_of(&with)) {
            Ok(Record::WithStack(e, s)) => {
                assert_eq!(e.pid, 1);
                assert_eq!(s, vec![0x10, 0x20, 0x30]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn nccl_records_carry_their_tail() {
        let event = Event {
            kind: KIND_NCCL,
            source: 6,
            op: 1,
            ..Event::default()
        };
        let tail = NcclTail {
            comm: 0xabc,
            count: 1024,
            seq: 3,
            datatype: 7,
            ..NcclTail::default()
        };
        let bytes = bytes_of(&NcclEvent { event, tail });
        assert_eq!(decode(&bytes), Ok(Record::Nccl(event, tail)));
        assert_eq!(decode(&bytes[..100]), Err(DecodeError(100)));
    }

    #[test]
    fn short_records_are_errors() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError(10)));
    }
}
