//! The vocabulary of the native trace: the field numbers of Perfetto's
//! trace protos the export writes, the annotation (argument) names, event
//! names and flows, and how names and annotations are encoded.
//!
//! Invariants: every field number here is the one in Perfetto's public
//! protos (perfetto/protos/perfetto/trace/...: TracePacket, TrackEvent,
//! TrackDescriptor, ClockSnapshot, InternedData, DebugAnnotation), checked
//! by decoding the output with Perfetto's own generated module in the
//! tests; [`Arg`] `n` is interned as iid `n`, the [`ARG_NAMES`] entry `n - 1`.

use super::super::protobuf::Encoder;

/// Field numbers of Perfetto's trace protos
/// (perfetto/protos/perfetto/trace/...), by message.
pub(super) mod field {
    /// `Trace.packet`.
    pub const TRACE_PACKET: u32 = 1;
    /// `TracePacket`.
    pub mod packet {
        pub const CLOCK_SNAPSHOT: u32 = 6;
        pub const TIMESTAMP: u32 = 8;
        pub const TRUSTED_PACKET_SEQUENCE_ID: u32 = 10;
        pub const TRACK_EVENT: u32 = 11;
        pub const INTERNED_DATA: u32 = 12;
        pub const SEQUENCE_FLAGS: u32 = 13;
        pub const TRACE_PACKET_DEFAULTS: u32 = 59;
        pub const TRACK_DESCRIPTOR: u32 = 60;
        pub const FIRST_PACKET_ON_SEQUENCE: u32 = 87;
        /// `TracePacket.SequenceFlags`.
        pub const SEQ_INCREMENTAL_STATE_CLEARED: u64 = 1;
        pub const SEQ_NEEDS_INCREMENTAL_STATE: u64 = 2;
    }
    /// `TracePacketDefaults`.
    pub const DEFAULTS_TIMESTAMP_CLOCK_ID: u32 = 58;
    /// `ClockSnapshot` and `ClockSnapshot.Clock`.
    pub mod clock {
        pub const CLOCKS: u32 = 1;
        pub const PRIMARY_TRACE_CLOCK: u32 = 2;
        pub const CLOCK_ID: u32 = 1;
        pub const TIMESTAMP: u32 = 2;
        pub const IS_INCREMENTAL: u32 = 3;
        /// `BuiltinClock.BUILTIN_CLOCK_REALTIME`: Unix time.
        pub const REALTIME: u64 = 1;
        /// The first sequence-scoped clock id (64..=127): a node's clock.
        pub const NODE: u64 = 64;
    }
    /// `InternedData` and its entries (`EventName`, `DebugAnnotationName`).
    pub mod interned {
        pub const EVENT_NAMES: u32 = 2;
        pub const DEBUG_ANNOTATION_NAMES: u32 = 3;
        pub const IID: u32 = 1;
        pub const NAME: u32 = 2;
    }
    /// `TrackEvent`.
    pub mod event {
        pub const DEBUG_ANNOTATIONS: u32 = 4;
        pub const TYPE: u32 = 9;
        pub const NAME_IID: u32 = 10;
        pub const TRACK_UUID: u32 = 11;
        pub const NAME: u32 = 23;
        pub const DOUBLE_COUNTER_VALUE: u32 = 44;
        pub const FLOW_IDS: u32 = 47;
        pub const TERMINATING_FLOW_IDS: u32 = 48;
        /// `TrackEvent.Type`.
        pub const SLICE_BEGIN: u64 = 1;
        pub const SLICE_END: u64 = 2;
        pub const INSTANT: u64 = 3;
        pub const COUNTER: u64 = 4;
    }
    /// `DebugAnnotation`.
    pub mod annotation {
        pub const NAME_IID: u32 = 1;
        pub const INT_VALUE: u32 = 4;
        pub const STRING_VALUE: u32 = 6;
        pub const ARRAY_VALUES: u32 = 12;
    }
    /// `TrackDescriptor`, `ProcessDescriptor`, `ThreadDescriptor`,
    /// `CounterDescriptor`.
    pub mod track {
        pub const UUID: u32 = 1;
        pub const NAME: u32 = 2;
        pub const PROCESS: u32 = 3;
        pub const THREAD: u32 = 4;
        pub const PARENT_UUID: u32 = 5;
        pub const COUNTER: u32 = 8;
        pub const PROCESS_PID: u32 = 1;
        pub const PROCESS_NAME: u32 = 6;
        pub const THREAD_PID: u32 = 1;
        pub const THREAD_TID: u32 = 2;
        pub const THREAD_NAME: u32 = 5;
        pub const COUNTER_UNIT_NAME: u32 = 6;
    }
}

use field::{annotation, event};

/// The names of the debug annotations (args) the export writes, interned
/// once per sequence: [`Arg`] `n` has iid `n`.
pub(super) const ARG_NAMES: [&str; 20] = [
    "arg0",
    "arg1",
    "ret",
    "next",
    "bytes",
    "sector",
    "issuer_pid",
    "issuer_tid",
    "pid",
    "tid",
    "comm",
    "seq",
    "count",
    "datatype",
    "peer",
    "severity",
    "root_cause",
    "explanation",
    "fix",
    "chain_id",
];

/// A debug annotation's name: each variant is the [`ARG_NAMES`] entry of
/// the same name.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Arg0 = 1,
    Arg1,
    Ret,
    Next,
    Bytes,
    Sector,
    IssuerPid,
    IssuerTid,
    Pid,
    Tid,
    Comm,
    Seq,
    Count,
    Datatype,
    Peer,
    Severity,
    RootCause,
    Explanation,
    Fix,
    ChainId,
}

/// A debug annotation's value.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// An integer.
    Int(i64),
    /// A text.
    Str(&'a str),
    /// A list of texts.
    Strs(&'a [String]),
}

/// What a name is interned under: ops by their ids, preemptions by the
/// preempting task, fixed texts by themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKey {
    /// An operation `(source, op)`.
    Op(u8, u8),
    /// "off-CPU: preempted by" this task.
    PreemptedBy(u32),
    /// A constant text.
    Fixed(&'static str),
}

/// An event's name: interned, or written in full.
#[derive(Debug, Clone)]
pub enum Name {
    /// An iid from this sequence's interned event names.
    Iid(u64),
    /// The text itself.
    Text(String),
}

/// How a slice takes part in a flow (arrows across tracks).
#[derive(Debug, Clone, Copy)]
pub enum Flow {
    /// Not in a flow.
    None,
    /// Starts or continues flow `id`.
    Step(u64),
    /// Ends flow `id`.
    Last(u64),
}

pub(super) fn write_name(e: &mut Encoder, name: &Name) {
    match name {
        Name::Iid(iid) => e.uint(event::NAME_IID, *iid),
        Name::Text(s) => e.string(event::NAME, s),
    }
}

pub(super) fn write_args(e: &mut Encoder, args: &[(Arg, Value<'_>)]) {
    for (arg, value) in args {
        e.message(event::DEBUG_ANNOTATIONS, |a| {
            a.uint(annotation::NAME_IID, *arg as u64);
            match value {
                Value::Int(v) => a.int(annotation::INT_VALUE, *v),
                Value::Str(s) => a.string(annotation::STRING_VALUE, s),
                Value::Strs(list) => {
                    for s in *list {
                        a.message(annotation::ARRAY_VALUES, |v| {
                            v.string(annotation::STRING_VALUE, s);
                        });
                    }
                }
            }
        });
    }
}
