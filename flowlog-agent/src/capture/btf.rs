//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): struct
//! member offsets and enum values by name.
//!
//! aya-ebpf has no CO-RE relocations, so the drop program cannot name
//! `skb->head` the way a C program compiled with clang would. Instead the
//! agent looks the offsets up here, at load time, in the running kernel's
//! own type information, and hands them to the program as read-only globals
//! (see [`super::reject`]). Enum values (drop reasons) are read the same
//! way: they differ between kernel versions.

use std::{collections::HashMap, fmt, path::Path};

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data ({0})")]
    Malformed(&'static str),
    #[error("BTF has no {0}")]
    Missing(String),
    #[error("cannot read {path}: {err}")]
    Io { path: String, err: String },
}

#[derive(Clone, Debug)]
struct Member {
    name: String,
    type_id: u32,
    /// Bit offset from the start of the enclosing struct/union.
    bit_offset: u32,
    /// Bitfield size; 0 for ordinary members.
    bitfield: u32,
}

#[derive(Clone, Debug)]
enum Type {
    /// Types this reader does not look into (arrays, functions, ...).
    Other,
    Int { size: u32 },
    Ptr(u32),
    Struct { size: u32, members: Vec<Member> },
    Enum { values: Vec<(String, i64)> },
    /// Typedef, const, volatile, restrict, type tag: the type they qualify.
    Alias(u32),
    FuncProto { params: Vec<u32> },
}

/// Parsed BTF: names and the few kinds the agent needs.
pub struct Btf {
    /// Index = type id; id 0 is `void`.
    types: Vec<(String, Type)>,
    by_name: HashMap<String, Vec<u32>>,
}

/// Where a member is: byte offset and size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Btf({} types)", self.types.len())
    }
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap())).ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Btf::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|e| BtfError::Io { path: path.display().to_string(), err: e.to_string() })?;
        Btf::parse(&data)
    }

    /// Little-endian BTF only (the BPF target is little-endian).
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types_b = data.get(hdr_len + type_off..hdr_len + type_off + type_len).ok_or(BtfError::Malformed("type section"))?;
        let strs = data.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or(BtfError::Malformed("string section"))?;
        let name = |off: u32| -> String {
            let s = strs.get(off as usize..).unwrap_or(&[]);
            let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };

        let mut types = vec![(String::new(), Type::Other)];
        let mut p = 0usize;
        while p < types_b.len() {
            let name_off = u32_at(types_b, p)?;
            let info = u32_at(types_b, p + 4)?;
            let size_or_type = u32_at(types_b, p + 8)?;
            p += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let t = match kind {
                KIND_INT => {
                    p += 4;
                    Type::Int { size: size_or_type }
                }
                KIND_PTR => Type::Ptr(size_or_type),
                3 => {
                    p += 12; // array
                    Type::Other
                }
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = p + i * 12;
                        let off = u32_at(types_b, m + 8)?;
                        let (bit_offset, bitfield) = if kind_flag { (off & 0xff_ffff, off >> 24) } else { (off, 0) };
                        members.push(Member { name: name(u32_at(types_b, m)?), type_id: u32_at(types_b, m + 4)?, bit_offset, bitfield });
                    }
                    p += vlen * 12;
                    Type::Struct { size: size_or_type, members }
                }
                KIND_ENUM | KIND_ENUM64 => {
                    // Entries: name, value (enum64: low and high 32 bits).
                    let size = if kind == KIND_ENUM64 { 12 } else { 8 };
                    let mut values = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = p + i * size;
                        let raw = u32_at(types_b, m + 4)?;
                        let v = if kind == KIND_ENUM64 {
                            (raw as u64 | (u32_at(types_b, m + 8)? as u64) << 32) as i64
                        } else if kind_flag {
                            raw as i32 as i64 // kind_flag: signed values.
                        } else {
                            raw as i64
                        };
                        values.push((name(u32_at(types_b, m)?), v));
                    }
                    p += vlen * size;
                    Type::Enum { values }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => Type::Alias(size_or_type),
                7 | 12 | 16 => Type::Other, // fwd, func, float
                KIND_FUNC_PROTO => {
                    let params = (0..vlen).map(|i| u32_at(types_b, p + i * 8 + 4)).collect::<Result<Vec<_>, _>>()?;
                    p += vlen * 8;
                    Type::FuncProto { params }
                }
                14 | 17 => {
                    p += 4; // var, decl tag
                    Type::Other
                }
                15 => {
                    p += vlen * 12; // datasec
                    Type::Other
                }
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            types.push((name(name_off), t));
        }
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (id, (n, _)) in types.iter().enumerate() {
            if !n.is_empty() {
                by_name.entry(n.clone()).or_default().push(id as u32);
            }
        }
        Ok(Btf { types, by_name })
    }

    fn resolve(&self, mut id: u32) -> (u32, &Type) {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some((_, Type::Alias(next))) => id = *next,
                Some((_, t)) => return (id, t),
                None => break,
            }
        }
        (0, &Type::Other)
    }

    fn struct_id(&self, name: &str) -> Option<u32> {
        // Forward declarations share the name: take the one with members.
        self.by_name.get(name)?.iter().copied().find(|id| matches!(self.types[*id as usize].1, Type::Struct { .. }))
    }

    fn size_of(&self, id: u32) -> u32 {
        match self.resolve(id).1 {
            Type::Int { size } | Type::Struct { size, .. } => *size,
            Type::Ptr(_) => 8,
            Type::Enum { .. } => 4,
            _ => 0,
        }
    }

    /// Finds `member` in the struct `sid`, looking into anonymous struct and
    /// union members (C11 anonymous members, `struct_group()`).
    fn find_member(&self, sid: u32, member: &str, base_bits: u32) -> Option<(u32, &Member)> {
        let Type::Struct { members, .. } = self.resolve(sid).1 else { return None };
        for m in members {
            if m.name == member {
                return Some((base_bits + m.bit_offset, m));
            }
        }
        for m in members.iter().filter(|m| m.name.is_empty()) {
            if let Some(found) = self.find_member(m.type_id, member, base_bits + m.bit_offset) {
                return Some(found);
            }
        }
        None
    }

    /// Byte offset and size of `strukt.member`; `member` may be a path
    /// through named members (`"nd_net.net"`).
    pub fn field(&self, strukt: &str, member: &str) -> Result<Field, BtfError> {
        let missing = || BtfError::Missing(format!("struct {strukt} member {member}"));
        let mut sid = self.struct_id(strukt).ok_or_else(|| BtfError::Missing(format!("struct {strukt}")))?;
        let mut bits = 0;
        let mut size = 0;
        for part in member.split('.') {
            let (b, m) = self.find_member(sid, part, 0).ok_or_else(missing)?;
            if m.bitfield != 0 || b % 8 != 0 {
                return Err(BtfError::Missing(format!("struct {strukt} member {member} (a bitfield)")));
            }
            bits += b;
            size = self.size_of(m.type_id);
            sid = self.resolve(m.type_id).0;
        }
        Ok(Field { offset: bits / 8, size })
    }

    /// Value of `variant` of `enum name`.
    pub fn enum_value(&self, name: &str, variant: &str) -> Result<i64, BtfError> {
        self.enum_values(name)?
            .iter()
            .find(|(n, _)| n == variant)
            .map(|(_, v)| *v)
            .ok_or_else(|| BtfError::Missing(format!("enum {name} value {variant}")))
    }

    /// All variants of `enum name`.
    pub fn enum_values(&self, name: &str) -> Result<&[(String, i64)], BtfError> {
        let ids = self.by_name.get(name).ok_or_else(|| BtfError::Missing(format!("enum {name}")))?;
        for id in ids {
            if let Type::Enum { values } = &self.types[*id as usize].1 {
                return Ok(values);
            }
        }
        Err(BtfError::Missing(format!("enum {name}")))
    }

    /// Parameter types of the function prototype a typedef'd pointer names
    /// (`btf_trace_<tracepoint>`), each as the name of what it points to or
    /// of the type itself (`"sk_buff"`, `"skb_drop_reason"`, `""` for void).
    pub fn proto_params(&self, typedef: &str) -> Result<Vec<String>, BtfError> {
        let missing = || BtfError::Missing(format!("function prototype {typedef}"));
        let id = *self.by_name.get(typedef).and_then(|v| v.first()).ok_or_else(missing)?;
        let proto = match self.resolve(id).1 {
            Type::Ptr(target) => self.resolve(*target).1,
            other => other,
        };
        let Type::FuncProto { params } = proto else { return Err(missing()) };
        Ok(params
            .iter()
            .map(|p| {
                let rid = match self.resolve(*p) {
                    (_, Type::Ptr(target)) => self.resolve(*target).0,
                    (rid, _) => rid,
                };
                self.types.get(rid as usize).map(|t| t.0.clone()).unwrap_or_default()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_sk_buff_and_drop_reasons() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux");
            return;
        };
        for (s, m) in [
            ("sk_buff", "head"),
            ("sk_buff", "data"),
            ("sk_buff", "len"),
            ("sk_buff", "network_header"),
            ("sk_buff", "tail"),
            ("sk_buff", "end"),
            ("sk_buff", "dev"),
            ("sk_buff", "skb_iif"),
            ("sk_buff", "_skb_refdst"),
            ("net_device", "ifindex"),
            ("net_device", "nd_net"),
            ("net", "ns"),
            ("ns_common", "inum"),
            ("dst_entry", "dev"),
            ("skb_shared_info", "gso_size"),
            ("skb_shared_info", "gso_segs"),
        ] {
            eprintln!("{s}.{m}: {:?}", btf.field(s, m));
        }
        eprintln!("{:?}", btf.proto_params("btf_trace_kfree_skb"));
        let nf = btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_NETFILTER_DROP").unwrap();
        assert!(nf > 0);
        assert_eq!(btf.field("sk_buff", "len").unwrap().size, 4);
    }
}
