"""Decodes a native Perfetto trace with Perfetto's own protobuf module and
checks its structure the way Perfetto's trace processor relies on it.

Usage: perfetto_check.py TRACE.pftrace

Prints one JSON object: "errors" (every rule broken, empty when the trace
is sound) and what the trace holds, for the Rust test to compare with the
database: per sequence its node, clock snapshot and time range; every
slice, instant and counter sample with its node, track and arguments; the
flows. Rules checked:
- every packet names its sequence; each sequence starts with a packet that
  clears incremental state and holds a clock snapshot; packets with a
  timestamp or an interned id say they need incremental state;
- a track is declared once, after its parent and before any event on it;
- interned ids (event names, annotation names) resolve on their sequence;
- BEGIN/END balance on every track, and ends come after begins;
- timestamps (delta-encoded on the node clock) never go back on a sequence;
- counters only on counter tracks, slices never on them;
- a flow is ended at most once, by its last slice on the reference clock
  (each sequence's node clock mapped through its clock snapshot).
"""

import json
import sys

from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import (
    ClockSnapshot,
    DebugAnnotation,
    Trace,
    TracePacket,
    TrackEvent,
)

CLEARED = TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
NEEDS = TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
NODE_PID_BASE = 1 << 22


def annotation_value(a, names):
    kind = a.WhichOneof("value")
    if kind is not None:
        return getattr(a, kind)
    if len(a.array_values):
        return [annotation_value(v, names) for v in a.array_values]
    return None


def main():
    data = open(sys.argv[1], "rb").read()
    trace = Trace()
    trace.ParseFromString(data)
    errors = []
    seqs = {}  # id -> state
    tracks = {}  # uuid -> descriptor facts
    open_slices = {}  # uuid -> stack of slices
    slices, instants, counters = [], [], []
    flows = {}

    def err(i, msg):
        if len(errors) < 50:
            errors.append(f"packet {i}: {msg}")

    for i, p in enumerate(trace.packet):
        if not p.HasField("trusted_packet_sequence_id") or p.trusted_packet_sequence_id == 0:
            err(i, "no trusted_packet_sequence_id")
            continue
        sid = p.trusted_packet_sequence_id
        s = seqs.get(sid)
        if s is None:
            if not p.sequence_flags & CLEARED or not p.first_packet_on_sequence:
                err(i, f"sequence {sid} does not start by clearing incremental state")
            s = seqs[sid] = {
                "names": {}, "args": {}, "clock": None, "realtime": None, "incremental": False,
                "primary": None, "default_clock": None, "last": None, "min": None, "max": None,
                "node": None, "packets": 0,
            }
        s["packets"] += 1
        if p.sequence_flags & CLEARED:
            s["names"], s["args"], s["default_clock"] = {}, {}, None
        if p.HasField("trace_packet_defaults"):
            s["default_clock"] = p.trace_packet_defaults.timestamp_clock_id
        if p.HasField("interned_data"):
            for e in p.interned_data.event_names:
                s["names"][e.iid] = e.name
            for e in p.interned_data.debug_annotation_names:
                s["args"][e.iid] = e.name
        if p.HasField("clock_snapshot"):
            for c in p.clock_snapshot.clocks:
                if c.clock_id == 64:
                    s["clock"], s["incremental"], s["last"] = c.timestamp, c.is_incremental, c.timestamp
                elif c.clock_id == 1:
                    s["realtime"] = c.timestamp
            if p.clock_snapshot.HasField("primary_trace_clock"):
                s["primary"] = p.clock_snapshot.primary_trace_clock
        uses_state = p.HasField("timestamp")
        ts = None
        if p.HasField("timestamp"):
            if s["default_clock"] != 64 or s["clock"] is None:
                err(i, "a timestamp on a sequence without its clock snapshot and defaults")
                continue
            if s["incremental"]:
                if p.timestamp >= 1 << 63:
                    err(i, f"a negative timestamp delta on sequence {sid}")
                ts = s["last"] + p.timestamp
            else:
                ts = p.timestamp
                if ts < s["last"]:
                    err(i, f"timestamp goes back on sequence {sid}")
            s["last"] = ts
            s["min"] = ts if s["min"] is None else min(s["min"], ts)
            s["max"] = ts if s["max"] is None else max(s["max"], ts)

        if p.HasField("track_descriptor"):
            d = p.track_descriptor
            if d.uuid in tracks:
                err(i, f"track {d.uuid} declared twice")
            if d.HasField("parent_uuid") and d.parent_uuid not in tracks:
                err(i, f"track {d.uuid} declared before its parent {d.parent_uuid}")
            t = {"uuid": d.uuid, "parent": d.parent_uuid if d.HasField("parent_uuid") else None,
                 "name": d.name, "seq": sid, "kind": "track"}
            if d.HasField("process"):
                t.update(kind="process", pid=d.process.pid, name=d.process.process_name)
                if d.process.pid >= NODE_PID_BASE:
                    s["node"] = d.process.process_name
            if d.HasField("thread"):
                t.update(kind="thread", pid=d.thread.pid, tid=d.thread.tid, name=d.thread.thread_name)
            if d.HasField("counter"):
                t.update(kind="counter", unit=d.counter.unit_name)
            tracks[d.uuid] = t

        if p.HasField("track_event"):
            e = p.track_event
            if ts is None:
                err(i, "a track event without a timestamp")
                continue
            if e.track_uuid not in tracks:
                err(i, f"event on undeclared track {e.track_uuid}")
                continue
            track = tracks[e.track_uuid]
            if track["seq"] != sid:
                err(i, "event on a track of another node's sequence")
            name = None
            if e.HasField("name_iid"):
                uses_state = True
                name = s["names"].get(e.name_iid)
                if name is None:
                    err(i, f"event name iid {e.name_iid} not interned on sequence {sid}")
            elif e.HasField("name"):
                name = e.name
            args = {}
            for a in e.debug_annotations:
                uses_state = True
                key = s["args"].get(a.name_iid) if a.HasField("name_iid") else a.name
                if key is None:
                    err(i, f"annotation name iid {a.name_iid} not interned on sequence {sid}")
                args[key] = annotation_value(a, s["args"])
            facts = {"node": s["node"], "track": e.track_uuid, "track_kind": track["kind"],
                     "track_name": track["name"], "tid": track.get("tid"), "name": name, "args": args}
            if track["kind"] == "track" and track["parent"] in tracks and tracks[track["parent"]]["kind"] == "thread":
                facts["tid"] = tracks[track["parent"]].get("tid")
            if e.type == TrackEvent.TYPE_SLICE_BEGIN:
                if track["kind"] == "counter":
                    err(i, "a slice on a counter track")
                facts.update(begin=ts, flows=list(e.flow_ids), ends_flows=list(e.terminating_flow_ids))
                open_slices.setdefault(e.track_uuid, []).append(facts)
                # On the reference clock: through the sequence's snapshot.
                at = ts - s["clock"] + (s["realtime"] if s["realtime"] is not None else s["clock"])
                for f in e.flow_ids:
                    flows.setdefault(f, []).append({"ts": ts, "at": at, "last": False, "slice": facts})
                for f in e.terminating_flow_ids:
                    flows.setdefault(f, []).append({"ts": ts, "at": at, "last": True, "slice": facts})
            elif e.type == TrackEvent.TYPE_SLICE_END:
                stack = open_slices.get(e.track_uuid)
                if not stack:
                    err(i, f"END without BEGIN on track {e.track_uuid}")
                    continue
                sl = stack.pop()
                if ts < sl["begin"]:
                    err(i, "a slice ends before it begins")
                sl["end"] = ts
                slices.append(sl)
            elif e.type == TrackEvent.TYPE_INSTANT:
                facts["ts"] = ts
                instants.append(facts)
            elif e.type == TrackEvent.TYPE_COUNTER:
                if track["kind"] != "counter":
                    err(i, "a counter value on a track that is not a counter")
                facts["ts"] = ts
                facts["value"] = e.double_counter_value if e.HasField("double_counter_value") else e.counter_value
                counters.append(facts)
            else:
                err(i, f"unexpected event type {e.type}")
        if uses_state and not p.sequence_flags & (NEEDS | CLEARED):
            err(i, "uses incremental state without SEQ_NEEDS_INCREMENTAL_STATE")

    for uuid, stack in open_slices.items():
        if stack:
            errors.append(f"{len(stack)} slice(s) never end on track {uuid}")
    for fid, steps in flows.items():
        ends = [x for x in steps if x["last"]]
        if len(ends) > 1:
            errors.append(f"flow {fid} ends {len(ends)} times")
        if ends and max(x["at"] for x in steps) > ends[0]["at"]:
            errors.append(f"flow {fid} continues after its end")
    primaries = [s["primary"] for s in seqs.values() if s["primary"] is not None]
    if primaries != [1]:
        errors.append(f"the trace clock is not named once as REALTIME: {primaries}")

    out = {
        "errors": errors,
        "bytes": len(data),
        "packets": len(trace.packet),
        "sequences": {
            str(k): {key: v[key] for key in ("node", "clock", "realtime", "incremental", "min", "max", "packets")}
            for k, v in seqs.items()
        },
        "tracks": list(tracks.values()),
        "slices": [{k: v for k, v in sl.items() if k != "track"} for sl in slices],
        "instants": instants,
        "counters": counters,
        "flows": {str(k): [{"node": x["slice"]["node"], "ts": x["ts"], "at": x["at"], "last": x["last"],
                            "comm": x["slice"]["args"].get("comm"), "seq": x["slice"]["args"].get("seq")}
                           for x in v] for k, v in flows.items()},
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
