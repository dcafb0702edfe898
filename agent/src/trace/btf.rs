//! Field offsets of kernel structures, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`).
//!
//! The BTF-typed `sched_switch` program (`tp_btf`) receives `struct
//! task_struct` pointers and reads their fields with plain loads; aya-ebpf
//! has no CO-RE relocations for Rust programs, so user space finds the
//! offsets here and writes them into `CONFIG` before loading, where the
//! verifier sees them as constants (`.rodata` is frozen) and checks every
//! load against the same BTF. The parser reads only what that needs:
//! structure and union members (descending into anonymous ones, as the
//! kernel's randomized layouts nest fields), type sizes, and the parameter
//! count of a function prototype.
//!
//! Invariant: a field is reported only with its exact byte offset and
//! size; anything unexpected (another byte order, a bit-field, a truncated
//! blob) yields `None`, and the caller falls back to the classic tracepoint.

use std::path::Path;

/// Where the running kernel publishes its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_FLOAT: u32 = 16;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One BTF type, with the parts this module reads.
#[derive(Debug, Clone, Default)]
struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: u32,
    /// Size (int, struct, union, enum, float) or referenced type id.
    size_or_ref: u32,
    /// Members of a struct or union: (name offset, type id, bit offset
    /// field as stored).
    members: Vec<(u32, u32, u32)>,
    /// Element type and count of an array.
    array: Option<(u32, u32)>,
}

/// The parsed type section and string table of a BTF blob.
#[derive(Debug)]
pub struct KernelBtf {
    /// Indexed by type id; id 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
}

/// A field's place in its structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Byte offset from the start of the structure.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl KernelBtf {
    /// The running kernel's BTF, if it publishes one.
    pub fn load(path: &Path) -> Option<Self> {
        Self::parse(&std::fs::read(path).ok()?)
    }

    /// Parses a little-endian BTF blob; `None` if it is not one.
    pub fn parse(data: &[u8]) -> Option<Self> {
        if u16::from_le_bytes(data.get(0..2)?.try_into().ok()?) != MAGIC {
            return None;
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = data.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
        let strings = data.get(hdr_len + str_off..hdr_len + str_off + str_len)?.to_vec();
        let mut types = vec![Type::default()];
        let mut at = 0;
        while at < section.len() {
            let info = u32_at(section, at + 4)?;
            let mut ty = Type {
                name_off: u32_at(section, at)?,
                kind: (info >> 24) & 0x1f,
                kind_flag: info >> 31 == 1,
                vlen: info & 0xffff,
                size_or_ref: u32_at(section, at + 8)?,
                ..Type::default()
            };
            at += 12;
            let vlen = ty.vlen as usize;
            at += match ty.kind {
                KIND_INT | 14 | 17 => 4,
                KIND_ARRAY => {
                    ty.array = Some((u32_at(section, at)?, u32_at(section, at + 8)?));
                    12
                }
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + 12 * i;
                        ty.members.push((
                            u32_at(section, m)?,
                            u32_at(section, m + 4)?,
                            u32_at(section, m + 8)?,
                        ));
                    }
                    12 * vlen
                }
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                15 | KIND_ENUM64 => 12 * vlen,
                _ => 0,
            };
            types.push(ty);
        }
        Some(Self { types, strings })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
    }

    fn find(&self, kind: u32, name: &str) -> Option<&Type> {
        self.types
            .iter()
            .find(|t| t.kind == kind && self.name(t.name_off) == name.as_bytes())
    }

    /// The type behind typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_ref;
                }
                _ => return Some(ty),
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        let ty = self.resolve(id)?;
        match ty.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Some(ty.size_or_ref)
            }
            KIND_PTR => Some(8),
            KIND_ARRAY => {
                let (elem, count) = ty.array?;
                self.size_of(elem)?.checked_mul(count)
            }
            _ => None,
        }
    }

    /// Searches `ty`'s members for `member`, descending into anonymous
    /// structures and unions; the offset is relative to `ty`.
    fn member_in(&self, ty: &Type, member: &str, depth: u32) -> Option<Field> {
        if depth > 8 {
            return None;
        }
        for &(name_off, type_id, raw) in &ty.members {
            let (bits, bitfield) = if ty.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            let name = self.name(name_off);
            if name == member.as_bytes() {
                if bitfield != 0 || bits % 8 != 0 {
                    return None;
                }
                return Some(Field {
                    offset: bits / 8,
                    size: self.size_of(type_id)?,
                });
            }
            if name.is_empty()
                && bits % 8 == 0
                && let Some(inner) = self
                    .resolve(type_id)
                    .filter(|t| matches!(t.kind, KIND_STRUCT | KIND_UNION))
                && let Some(found) = self.member_in(inner, member, depth + 1)
            {
                return Some(Field {
                    offset: bits / 8 + found.offset,
                    ..found
                });
            }
        }
        None
    }

    /// Offset and size of `member` in `struct name`.
    pub fn member(&self, name: &str, member: &str) -> Option<Field> {
        self.member_in(self.find(KIND_STRUCT, name)?, member, 0)
    }

    /// Parameters of the function prototype that typedef `name` points
    /// to (the kernel's `btf_trace_<tracepoint>` typedefs: the hidden
    /// context argument first, then the tracepoint's own).
    pub fn prototype_params(&self, typedef: &str) -> Option<u32> {
        let ptr = self.resolve(self.find(KIND_TYPEDEF, typedef)?.size_or_ref)?;
        if ptr.kind != KIND_PTR {
            return None;
        }
        let proto = self.resolve(ptr.size_or_ref)?;
        (proto.kind == KIND_FUNC_PROTO).then_some(proto.vlen)
    }
}

/// The `task_struct` offsets the BTF-typed `sched_switch` program needs,
/// if this kernel has BTF, those fields with their expected sizes, and a
/// `sched_switch` tracepoint that passes `prev_state` (Linux 5.18+: the
/// hidden context, `preempt`, `prev`, `next`, `prev_state`).
pub fn task_fields(btf: &KernelBtf) -> Option<agent_common::config::TaskFields> {
    if btf.prototype_params("btf_trace_sched_switch")? != 5 {
        return None;
    }
    let field = |name: &str, size: u32| btf.member("task_struct", name).filter(|f| f.size == size);
    Some(agent_common::config::TaskFields {
        pid: field("pid", 4)?.offset,
        tgid: field("tgid", 4)?.offset,
        comm: field("comm", 16)?.offset,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob with `struct task_struct { int x; union { struct { int pid; int
    /// tgid; }; }; char comm[16]; unsigned flags:3; }` and a prototype typedef.
    fn sample() -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut name = |s: &str| {
            let off = strings.len() as u32;
            strings.extend(s.as_bytes());
            strings.push(0);
            off
        };
        let [int, char, task, x, pid, tgid, comm, flags, typedef] = [
            "int",
            "char",
            "task_struct",
            "x",
            "pid",
            "tgid",
            "comm",
            "flags",
            "btf_trace_x",
        ]
        .map(&mut name);
        let mut t: Vec<u32> = Vec::new();
        let info = |kind: u32, vlen: u32, flag: bool| (u32::from(flag) << 31) | (kind << 24) | vlen;
        // 1: int (4 bytes)
        t.extend([int, info(KIND_INT, 0, false), 4, 32]);
        // 2: char (1 byte)
        t.extend([char, info(KIND_INT, 0, false), 1, 8]);
        // 3: char[16]
        t.extend([0, info(KIND_ARRAY, 0, false), 0, 2, 1, 16]);
        // 4: anonymous struct { int pid; int tgid; }
        t.extend([0, info(KIND_STRUCT, 2, false), 8]);
        t.extend([pid, 1, 0, tgid, 1, 32]);
        // 5: anonymous union { struct 4; }
        t.extend([0, info(KIND_UNION, 1, false), 8, 0, 4, 0]);
        // 6: struct task_struct, with a bit-field (kind_flag offsets)
        t.extend([task, info(KIND_STRUCT, 4, true), 32]);
        t.extend([x, 1, 0]);
        t.extend([0, 5, 64]);
        t.extend([comm, 3, 128]);
        t.extend([flags, 1, (3 << 24) | 256]);
        // 7: func proto (3 params), 8: pointer to it, 9: typedef of the pointer
        t.extend([0, info(KIND_FUNC_PROTO, 3, false), 0, 0, 1, 0, 1, 0, 1]);
        t.extend([0, info(KIND_PTR, 0, false), 7]);
        t.extend([typedef, info(KIND_TYPEDEF, 0, false), 8]);
        let types: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut blob = Vec::new();
        blob.extend(MAGIC.to_le_bytes());
        blob.extend([1u8, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend(v.to_le_bytes());
        }
        blob.extend(types);
        blob.append(&mut strings);
        blob
    }

    #[test]
    fn members_are_found_through_anonymous_unions_and_structs() {
        let btf = KernelBtf::parse(&sample()).expect("parses");
        assert_eq!(btf.member("task_struct", "x"), Some(Field { offset: 0, size: 4 }));
        assert_eq!(
            btf.member("task_struct", "pid"),
            Some(Field { offset: 8, size: 4 })
        );
        assert_eq!(
            btf.member("task_struct", "tgid"),
            Some(Field { offset: 12, size: 4 })
        );
        assert_eq!(
            btf.member("task_struct", "comm"),
            Some(Field { offset: 16, size: 16 })
        );
        assert_eq!(
            btf.member("task_struct", "flags"),
            None,
            "a bit-field has no byte offset"
        );
        assert_eq!(btf.member("task_struct", "nope"), None);
        assert_eq!(btf.member("mm_struct", "pid"), None);
        assert_eq!(btf.prototype_params("btf_trace_x"), Some(3));
        assert_eq!(btf.prototype_params("btf_trace_y"), None);
    }

    #[test]
    fn anything_but_btf_is_refused() {
        assert!(KernelBtf::parse(b"").is_none());
        assert!(
            KernelBtf::parse(&[0x9f, 0xeb, 1, 0]).is_none(),
            "truncated header"
        );
        let mut swapped = sample();
        swapped.swap(0, 1);
        assert!(KernelBtf::parse(&swapped).is_none(), "big-endian blob");
        let mut cut = sample();
        cut.truncate(cut.len() - 40);
        assert!(KernelBtf::parse(&cut).is_none(), "string table cut short");
    }

    #[test]
    fn the_running_kernel_describes_task_struct() {
        let Some(btf) = KernelBtf::load(Path::new(VMLINUX)) else {
            eprintln!("skipped: no {VMLINUX}");
            return;
        };
        assert_eq!(btf.member("task_struct", "pid").map(|f| f.size), Some(4));
        assert_eq!(btf.member("task_struct", "tgid").map(|f| f.size), Some(4));
        assert_eq!(btf.member("task_struct", "comm").map(|f| f.size), Some(16));
        let fields = task_fields(&btf).expect("Linux 5.18+ passes prev_state to sched_switch");
        assert!(fields.pid != fields.tgid && fields.comm > 0);
    }
}
