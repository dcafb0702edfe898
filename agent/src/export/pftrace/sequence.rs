//! One node's packet sequence in the native Perfetto trace: its clock, its
//! tracks, its slices, instants and counters, and its interned strings.
//!
//! Invariants, each one a rule of Perfetto's trace format:
//! - the sequence opens with one packet that clears incremental state
//!   (`SEQ_INCREMENTAL_STATE_CLEARED`) and carries the node's clock
//!   snapshot, the packet defaults (timestamps on the node's clock) and the
//!   fixed interned strings; every later packet that has a timestamp or an
//!   interned id says `SEQ_NEEDS_INCREMENTAL_STATE`;
//! - timestamps are on the node's own clock (a sequence-scoped clock,
//!   id 64, delta-encoded), never decreasing along the sequence: callers
//!   hand items in time order and every END waits in a heap until the
//!   stream has passed its time;
//! - a track is declared (TrackDescriptor) before any event uses it, a
//!   parent before its children;
//! - slices on one track nest strictly: a slice goes to the first lane of
//!   its thread (or of the node's block I/O) where it fits inside the open
//!   slice, and a new lane is declared when none does, so BEGIN and END
//!   always pair up on a track;
//! - an interned name is defined in a packet before (or in) the packet
//!   that first uses it; at most [`MAX_NAMES`] names per sequence are
//!   interned, later ones are written in full, so memory stays bounded.

#![expect(
    clippy::needless_pass_by_value,
    clippy::single_match_else,
    reason = "written against an older toolchain's lint set; behaviour covered by the perfetto tests"
)]

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    hash::{BuildHasherDefault, Hasher},
    io::Write,
};

use super::{
    super::protobuf::Encoder,
    proto::{
        ARG_NAMES, Arg, Flow, Name, NameKey, Value,
        field::{self, clock, event, interned, packet, track},
        write_args, write_name,
    },
};

/// Interned event names per sequence, at most; later names are written in
/// full in each event.
pub const MAX_NAMES: usize = 10_000;

/// A multiply-rotate hasher for the small integer keys of the per-event
/// lookups (tids, pids, op ids): several times cheaper than SipHash, and
/// the keys come from the database, not from an adversary who could pick
/// colliding ones to any effect beyond a slower export.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

/// A map keyed by ids, hashed with [`IdHasher`].
type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// The trace file: packets are encoded into a buffer, written out in
/// blocks. Owns the track-uuid counter (uuids are global to the trace).
pub struct Output<W: Write> {
    out: W,
    enc: Encoder,
    next_uuid: u64,
    /// Whether a clock snapshot was written (the first one names the trace
    /// clock).
    clocked: bool,
}

impl<W: Write> Output<W> {
    /// A trace written to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            enc: Encoder::default(),
            next_uuid: 1,
            clocked: false,
        }
    }

    fn uuid(&mut self) -> u64 {
        self.next_uuid += 1;
        self.next_uuid - 1
    }

    fn maybe_flush(&mut self) -> std::io::Result<()> {
        if self.enc.as_bytes().len() >= 1 << 16 {
            self.out.write_all(self.enc.as_bytes())?;
            self.enc.clear();
        }
        Ok(())
    }

    /// Writes what is buffered and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.write_all(self.enc.as_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A track on which slices nest: its uuid and the ends of its open slices
/// (innermost last).
#[derive(Debug)]
struct Lane {
    uuid: u64,
    open: Vec<i64>,
}

/// A traced process of the node: its track and its counter track.
#[derive(Debug)]
struct Process {
    uuid: u64,
    allocations: Option<u64>,
}

/// One node's sequence. See the module documentation for its invariants.
#[derive(Debug)]
pub struct Sequence {
    id: u64,
    node_uuid: u64,
    /// The pid the node's process descriptor (and its threads) carry.
    node_pid: i64,
    /// The last timestamp written, on the node's clock.
    last_ts: i64,
    lanes: Vec<Lane>,
    /// A thread's lanes by tid: its thread track first.
    threads: IdMap<u32, Vec<usize>>,
    processes: IdMap<u32, Process>,
    io_lanes: Vec<usize>,
    cpu: Option<u64>,
    /// Pending ENDs: (time, begin order reversed, lane); the earliest first
    /// and, at equal times, the latest begun (the innermost) first.
    ends: BinaryHeap<Reverse<(i64, Reverse<u64>, usize)>>,
    begun: u64,
    names: IdMap<NameKey, u64>,
    new_names: Vec<(u64, String)>,
}

impl Sequence {
    /// Opens sequence `id` (1-based, one per node) with its first packet
    /// and its node track. `start` is the node's earliest time on its own
    /// clock (nothing in the sequence may be earlier), `offset_ns` how far
    /// the node's clock is ahead of the reference (Unix) clock.
    pub fn start<W: Write>(
        out: &mut Output<W>,
        id: u64,
        label: &str,
        node_pid: i64,
        start: i64,
        offset_ns: i64,
    ) -> std::io::Result<Self> {
        let start = start.max(0);
        let primary = !out.clocked;
        out.clocked = true;
        out.enc.message(field::TRACE_PACKET, |p| {
            p.uint(packet::TRUSTED_PACKET_SEQUENCE_ID, id);
            p.uint(packet::SEQUENCE_FLAGS, packet::SEQ_INCREMENTAL_STATE_CLEARED);
            p.boolean(packet::FIRST_PACKET_ON_SEQUENCE, true);
            p.message(packet::CLOCK_SNAPSHOT, |c| {
                c.message(clock::CLOCKS, |k| {
                    k.uint(clock::CLOCK_ID, clock::NODE);
                    k.uint(clock::TIMESTAMP, start as u64);
                    k.boolean(clock::IS_INCREMENTAL, true);
                });
                c.message(clock::CLOCKS, |k| {
                    k.uint(clock::CLOCK_ID, clock::REALTIME);
                    k.uint(clock::TIMESTAMP, start.saturating_sub(offset_ns).max(0) as u64);
                });
                if primary {
                    c.uint(clock::PRIMARY_TRACE_CLOCK, clock::REALTIME);
                }
            });
            p.message(packet::TRACE_PACKET_DEFAULTS, |d| {
                d.uint(field::DEFAULTS_TIMESTAMP_CLOCK_ID, clock::NODE);
            });
            p.message(packet::INTERNED_DATA, |i| {
                for (n, name) in ARG_NAMES.iter().enumerate() {
                    i.message(interned::DEBUG_ANNOTATION_NAMES, |e| {
                        e.uint(interned::IID, n as u64 + 1);
                        e.string(interned::NAME, name);
                    });
                }
            });
        });
        let node_uuid = out.uuid();
        let seq = Self {
            id,
            node_uuid,
            node_pid,
            last_ts: start,
            lanes: Vec::new(),
            threads: IdMap::default(),
            processes: IdMap::default(),
            io_lanes: Vec::new(),
            cpu: None,
            ends: BinaryHeap::new(),
            begun: 0,
            names: IdMap::default(),
            new_names: Vec::new(),
        };
        seq.descriptor(out, |d| {
            d.uint(track::UUID, node_uuid);
            d.string(track::NAME, label);
            d.message(track::PROCESS, |p| {
                p.int(track::PROCESS_PID, node_pid);
                p.string(track::PROCESS_NAME, label);
            });
        })?;
        Ok(seq)
    }

    /// The node's own track (a process track): chains go here.
    pub fn node_track(&self) -> u64 {
        self.node_uuid
    }

    /// How many thread tracks the sequence declared.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Writes a packet of this sequence: a timestamp (as a delta on the
    /// node's clock) if `ts` is given, the names interned since the last
    /// packet, and `body`.
    fn packet<W: Write>(
        &mut self,
        out: &mut Output<W>,
        ts: Option<i64>,
        body: impl FnOnce(&mut Encoder),
    ) -> std::io::Result<()> {
        let delta = ts.map(|t| {
            debug_assert!(t >= self.last_ts, "timestamps go back on sequence {}", self.id);
            let d = (t - self.last_ts).max(0);
            self.last_ts += d;
            d as u64
        });
        let new_names = std::mem::take(&mut self.new_names);
        let id = self.id;
        out.enc.message(field::TRACE_PACKET, |p| {
            if let Some(d) = delta {
                p.uint(packet::TIMESTAMP, d);
            }
            p.uint(packet::TRUSTED_PACKET_SEQUENCE_ID, id);
            p.uint(packet::SEQUENCE_FLAGS, packet::SEQ_NEEDS_INCREMENTAL_STATE);
            if !new_names.is_empty() {
                p.message(packet::INTERNED_DATA, |i| {
                    for (iid, name) in &new_names {
                        i.message(interned::EVENT_NAMES, |e| {
                            e.uint(interned::IID, *iid);
                            e.string(interned::NAME, name);
                        });
                    }
                });
            }
            body(p);
        });
        out.maybe_flush()
    }

    /// Writes a track descriptor (no timestamp, no interned data).
    fn descriptor<W: Write>(
        &self,
        out: &mut Output<W>,
        body: impl FnOnce(&mut Encoder),
    ) -> std::io::Result<()> {
        out.enc.message(field::TRACE_PACKET, |p| {
            p.uint(packet::TRUSTED_PACKET_SEQUENCE_ID, self.id);
            p.message(packet::TRACK_DESCRIPTOR, body);
        });
        out.maybe_flush()
    }

    /// The name for `key`, interned on first use (`make` gives its text).
    pub fn name(&mut self, key: NameKey, make: impl FnOnce() -> String) -> Name {
        if let Some(&iid) = self.names.get(&key) {
            return Name::Iid(iid);
        }
        if self.names.len() >= MAX_NAMES {
            return Name::Text(make());
        }
        let iid = self.names.len() as u64 + 1;
        self.names.insert(key, iid);
        self.new_names.push((iid, make()));
        Name::Iid(iid)
    }

    /// The track of traced process `pid`, declared under the node on first
    /// use (`label` names it).
    pub fn process<W: Write>(
        &mut self,
        out: &mut Output<W>,
        pid: u32,
        label: impl FnOnce() -> String,
    ) -> std::io::Result<u64> {
        if let Some(p) = self.processes.get(&pid) {
            return Ok(p.uuid);
        }
        let uuid = out.uuid();
        let parent = self.node_uuid;
        self.descriptor(out, |d| {
            d.uint(track::UUID, uuid);
            d.uint(track::PARENT_UUID, parent);
            d.string(track::NAME, &label());
        })?;
        self.processes.insert(
            pid,
            Process {
                uuid,
                allocations: None,
            },
        );
        Ok(uuid)
    }

    /// The thread track of `tid`, if declared.
    pub fn thread_uuid(&self, tid: u32) -> Option<u64> {
        self.threads.get(&tid).map(|lanes| self.lanes[lanes[0]].uuid)
    }

    /// The thread track of `tid` (of process `pid`, whose track must exist),
    /// declared on first use with `name`.
    pub fn thread<W: Write>(
        &mut self,
        out: &mut Output<W>,
        pid: u32,
        tid: u32,
        name: impl FnOnce() -> String,
    ) -> std::io::Result<u64> {
        if let Some(lanes) = self.threads.get(&tid) {
            return Ok(self.lanes[lanes[0]].uuid);
        }
        let uuid = out.uuid();
        let parent = self.processes.get(&pid).map_or(self.node_uuid, |p| p.uuid);
        let node_pid = self.node_pid;
        self.descriptor(out, |d| {
            d.uint(track::UUID, uuid);
            d.uint(track::PARENT_UUID, parent);
            d.message(track::THREAD, |t| {
                t.int(track::THREAD_PID, node_pid);
                t.int(track::THREAD_TID, i64::from(tid));
                t.string(track::THREAD_NAME, &name());
            });
        })?;
        self.lanes.push(Lane {
            uuid,
            open: Vec::new(),
        });
        self.threads.insert(tid, vec![self.lanes.len() - 1]);
        Ok(uuid)
    }

    /// A counter track under `parent`, declared now.
    fn counter_track<W: Write>(
        &self,
        out: &mut Output<W>,
        parent: u64,
        name: &str,
        unit: &str,
    ) -> std::io::Result<u64> {
        let uuid = out.uuid();
        self.descriptor(out, |d| {
            d.uint(track::UUID, uuid);
            d.uint(track::PARENT_UUID, parent);
            d.string(track::NAME, name);
            d.message(track::COUNTER, |c| c.string(track::COUNTER_UNIT_NAME, unit));
        })?;
        Ok(uuid)
    }

    /// The page-allocation counter of process `pid` (whose track must exist).
    pub fn allocations<W: Write>(&mut self, out: &mut Output<W>, pid: u32) -> std::io::Result<u64> {
        let parent = match self.processes.get(&pid) {
            Some(Process {
                allocations: Some(uuid),
                ..
            }) => return Ok(*uuid),
            Some(p) => p.uuid,
            None => self.node_uuid,
        };
        let uuid = self.counter_track(out, parent, "page allocations (MiB/s)", "MiB/s")?;
        if let Some(p) = self.processes.get_mut(&pid) {
            p.allocations = Some(uuid);
        }
        Ok(uuid)
    }

    /// The node's CPU-load counter.
    pub fn cpu<W: Write>(&mut self, out: &mut Output<W>) -> std::io::Result<u64> {
        if let Some(uuid) = self.cpu {
            return Ok(uuid);
        }
        let uuid = self.counter_track(out, self.node_uuid, "CPU busy %", "%")?;
        self.cpu = Some(uuid);
        Ok(uuid)
    }

    /// Writes the ENDs of the slices that are over by `t`.
    pub fn advance<W: Write>(&mut self, out: &mut Output<W>, t: i64) -> std::io::Result<()> {
        while let Some(&Reverse((end, _, lane))) = self.ends.peek() {
            if end > t {
                break;
            }
            self.ends.pop();
            self.lanes[lane].open.pop();
            let uuid = self.lanes[lane].uuid;
            self.packet(out, Some(end), |p| {
                p.message(packet::TRACK_EVENT, |e| {
                    e.uint(event::TYPE, event::SLICE_END);
                    e.uint(event::TRACK_UUID, uuid);
                });
            })?;
        }
        Ok(())
    }

    /// The first lane among `lanes` where a slice ending at `end` nests.
    fn fitting(&self, lanes: &[usize], end: i64) -> Option<usize> {
        lanes
            .iter()
            .copied()
            .find(|&l| self.lanes[l].open.last().is_none_or(|&top| top >= end))
    }

    /// A new lane under `parent` named `name`.
    fn new_lane<W: Write>(&mut self, out: &mut Output<W>, parent: u64, name: &str) -> std::io::Result<usize> {
        let uuid = out.uuid();
        self.descriptor(out, |d| {
            d.uint(track::UUID, uuid);
            d.uint(track::PARENT_UUID, parent);
            d.string(track::NAME, name);
        })?;
        self.lanes.push(Lane {
            uuid,
            open: Vec::new(),
        });
        Ok(self.lanes.len() - 1)
    }

    /// A slice `[start, end]` on thread `tid` (declared with
    /// [`Self::thread`]): on its thread track, or on an extra lane under it
    /// when it overlaps the open slice there without nesting.
    #[expect(clippy::too_many_arguments, reason = "a slice has this many parts")]
    pub fn thread_slice<W: Write>(
        &mut self,
        out: &mut Output<W>,
        tid: u32,
        start: i64,
        end: i64,
        name: Name,
        args: &[(Arg, Value<'_>)],
        flow: Flow,
    ) -> std::io::Result<()> {
        self.advance(out, start)?;
        let lanes = self.threads.get(&tid).map(Vec::as_slice).unwrap_or_default();
        let (fit, first) = (self.fitting(lanes, end), lanes.first().copied());
        let lane = match fit {
            Some(l) => l,
            None => {
                let parent = first.map_or(self.node_uuid, |l| self.lanes[l].uuid);
                let l = self.new_lane(out, parent, "overlapping calls")?;
                if let Some(v) = self.threads.get_mut(&tid) {
                    v.push(l);
                }
                l
            }
        };
        self.begin(out, lane, start, end, &name, args, flow)
    }

    /// A block I/O request `[start, end]` on the node's I/O lanes.
    pub fn io_slice<W: Write>(
        &mut self,
        out: &mut Output<W>,
        start: i64,
        end: i64,
        name: Name,
        args: &[(Arg, Value<'_>)],
    ) -> std::io::Result<()> {
        self.advance(out, start)?;
        let lane = match self.fitting(&self.io_lanes, end) {
            Some(l) => l,
            None => {
                let l = self.new_lane(out, self.node_uuid, "block I/O")?;
                self.io_lanes.push(l);
                l
            }
        };
        self.begin(out, lane, start, end, &name, args, Flow::None)
    }

    #[expect(clippy::too_many_arguments, reason = "a slice has this many parts")]
    fn begin<W: Write>(
        &mut self,
        out: &mut Output<W>,
        lane: usize,
        start: i64,
        end: i64,
        name: &Name,
        args: &[(Arg, Value<'_>)],
        flow: Flow,
    ) -> std::io::Result<()> {
        self.lanes[lane].open.push(end);
        self.begun += 1;
        self.ends.push(Reverse((end, Reverse(self.begun), lane)));
        let uuid = self.lanes[lane].uuid;
        self.packet(out, Some(start), |p| {
            p.message(packet::TRACK_EVENT, |e| {
                e.uint(event::TYPE, event::SLICE_BEGIN);
                e.uint(event::TRACK_UUID, uuid);
                write_name(e, name);
                write_args(e, args);
                match flow {
                    Flow::None => {}
                    Flow::Step(id) => e.fixed64(event::FLOW_IDS, id),
                    Flow::Last(id) => e.fixed64(event::TERMINATING_FLOW_IDS, id),
                }
            });
        })
    }

    /// An instant event on `track` at `t`.
    pub fn instant<W: Write>(
        &mut self,
        out: &mut Output<W>,
        track: u64,
        t: i64,
        name: &Name,
        args: &[(Arg, Value<'_>)],
    ) -> std::io::Result<()> {
        self.advance(out, t)?;
        self.packet(out, Some(t), |p| {
            p.message(packet::TRACK_EVENT, |e| {
                e.uint(event::TYPE, event::INSTANT);
                e.uint(event::TRACK_UUID, track);
                write_name(e, name);
                write_args(e, args);
            });
        })
    }

    /// A counter sample on counter track `track` at `t`.
    pub fn counter<W: Write>(
        &mut self,
        out: &mut Output<W>,
        track: u64,
        t: i64,
        value: f64,
    ) -> std::io::Result<()> {
        self.advance(out, t)?;
        self.packet(out, Some(t), |p| {
            p.message(packet::TRACK_EVENT, |e| {
                e.uint(event::TYPE, event::COUNTER);
                e.uint(event::TRACK_UUID, track);
                e.double(event::DOUBLE_COUNTER_VALUE, value);
            });
        })
    }

    /// Ends every open slice: the sequence is complete.
    pub fn finish<W: Write>(mut self, out: &mut Output<W>) -> std::io::Result<()> {
        self.advance(out, i64::MAX)
    }
}
