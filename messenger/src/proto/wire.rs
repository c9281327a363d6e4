//! Ceph's primitive encodings as msgr2 control payloads use them (little-endian integers,
//! length-prefixed buffers, `entity_addr_t`, `entity_addrvec_t`, `EntityName`).
//!
//! Decoding never allocates more than the input already holds: every length read from the
//! wire is checked against the bytes that remain before anything is sized by it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::BufMut;

/// A malformed field inside a control payload or message header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated {what}: needs {need} bytes, {have} remain")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{0} trailing bytes after the payload")]
    TrailingBytes(usize),
    #[error("bad {what} marker {got} (expected {expected})")]
    BadMarker {
        what: &'static str,
        got: u8,
        expected: u8,
    },
    #[error("{what} declares length {len}, more than the {have} bytes that remain")]
    LengthOverrun {
        what: &'static str,
        len: usize,
        have: usize,
    },
    #[error("entity_addr_t sockaddr length {elen} does not fit family {family}")]
    BadSockaddr { family: u16, elen: u32 },
    #[error("entity_addr_t struct_len {0} is shorter than its fixed fields")]
    AddrTooShort(u32),
    #[error("entity name is not UTF-8")]
    NameNotUtf8,
    #[error("entity name type {0:#x} is not an entity type (those fit a byte)")]
    BadEntityType(u32),
}

/// A bounds-checked little-endian reader over a borrowed payload.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if n > self.remaining() {
            return Err(WireError::Truncated {
                what,
                need: n,
                have: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    pub fn i32(&mut self, what: &'static str) -> Result<i32, WireError> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    pub fn i64(&mut self, what: &'static str) -> Result<i64, WireError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    /// A `bufferlist`/`string`: le32 length and the bytes, borrowed.
    pub fn bufferlist(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.u32(what)? as usize;
        if len > self.remaining() {
            return Err(WireError::LengthOverrun {
                what,
                len,
                have: self.remaining(),
            });
        }
        self.take(len, what)
    }

    /// A `vector<u32>`; the count is checked against the remaining bytes first.
    pub fn u32_vec(&mut self, what: &'static str) -> Result<Vec<u32>, WireError> {
        let count = self.u32(what)? as usize;
        if count > self.remaining() / 4 {
            return Err(WireError::LengthOverrun {
                what,
                len: count.saturating_mul(4),
                have: self.remaining(),
            });
        }
        (0..count).map(|_| self.u32(what)).collect()
    }

    pub fn finish(self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(WireError::TrailingBytes(n)),
        }
    }
}

pub fn put_bufferlist(out: &mut impl BufMut, data: &[u8]) {
    out.put_u32_le(data.len() as u32);
    out.put_slice(data);
}

pub fn put_u32_vec(out: &mut impl BufMut, values: &[u32]) {
    out.put_u32_le(values.len() as u32);
    for v in values {
        out.put_u32_le(*v);
    }
}

/// Ceph's entity types (`CEPH_ENTITY_TYPE_*`), one byte in HELLO, le32 inside `EntityName`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct EntityType(pub u8);

impl EntityType {
    pub const MON: EntityType = EntityType(0x01);
    pub const MDS: EntityType = EntityType(0x02);
    pub const OSD: EntityType = EntityType(0x04);
    pub const CLIENT: EntityType = EntityType(0x08);
    pub const MGR: EntityType = EntityType(0x10);
    pub const AUTH: EntityType = EntityType(0x20);
    pub const ANY: EntityType = EntityType(0xff);

    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::MON => "mon",
            Self::MDS => "mds",
            Self::OSD => "osd",
            Self::CLIENT => "client",
            Self::MGR => "mgr",
            Self::AUTH => "auth",
            Self::ANY => "any",
            _ => return None,
        })
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::MON,
            Self::MDS,
            Self::OSD,
            Self::CLIENT,
            Self::MGR,
            Self::AUTH,
            Self::ANY,
        ]
        .into_iter()
        .find(|t| t.name() == Some(name))
    }
}

impl fmt::Debug for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}({})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// `EntityName`: le32 type and a string id such as "admin" or "0".
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct EntityName {
    pub ty: EntityType,
    pub id: String,
}

impl EntityName {
    /// `EntityName::new(EntityType::CLIENT, "admin")` is `client.admin`.
    pub fn new(ty: EntityType, id: impl Into<String>) -> Self {
        EntityName { ty, id: id.into() }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let ty = r.u32("entity name type")?;
        // Ceph's EntityName keeps a u32, but every CEPH_ENTITY_TYPE_* is a byte (as
        // entity_name_t's `_type` is): a larger one is refused rather than truncated into
        // another type.
        let ty = u8::try_from(ty).map_err(|_| WireError::BadEntityType(ty))?;
        let id = r.bufferlist("entity name")?;
        let id = std::str::from_utf8(id).map_err(|_| WireError::NameNotUtf8)?;
        Ok(EntityName {
            ty: EntityType(ty),
            id: id.to_owned(),
        })
    }

    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u32_le(self.ty.0 as u32);
        put_bufferlist(out, self.id.as_bytes());
    }
}

/// Parses Ceph's `TYPE.ID` form: `client.admin`, `osd.0`, `mon.a`.
impl std::str::FromStr for EntityName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ty, id) = s
            .split_once('.')
            .ok_or_else(|| format!("{s:?} is not TYPE.ID (client.admin, osd.0)"))?;
        let ty = EntityType::from_name(ty)
            .ok_or_else(|| format!("unknown entity type {ty:?} (mon, osd, client, mds, mgr)"))?;
        Ok(EntityName::new(ty, id))
    }
}

impl fmt::Display for EntityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ty.name() {
            Some(n) => write!(f, "{n}.{}", self.id),
            None => write!(f, "{}.{}", self.ty.0, self.id),
        }
    }
}

/// `entity_addr_t::type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum AddrType {
    None,
    Legacy,
    Msgr2,
    Any,
    Cidr,
    /// msgr2 over RDMA (Ringwire's own; the socket address is the queue-pair side channel).
    /// Not a Ceph type: Ceph peers never dial it.
    Rdma,
    Other(u32),
}

/// Far from Ceph's types (0–4), so no Ceph release mistakes it for one of its own.
const RDMA_WIRE: u32 = 0x5244;

impl AddrType {
    pub fn from_wire(v: u32) -> Self {
        match v {
            0 => Self::None,
            1 => Self::Legacy,
            2 => Self::Msgr2,
            3 => Self::Any,
            4 => Self::Cidr,
            RDMA_WIRE => Self::Rdma,
            v => Self::Other(v),
        }
    }
    pub fn to_wire(self) -> u32 {
        match self {
            Self::None => 0,
            Self::Legacy => 1,
            Self::Msgr2 => 2,
            Self::Any => 3,
            Self::Cidr => 4,
            Self::Rdma => RDMA_WIRE,
            Self::Other(v) => v,
        }
    }
    fn prefix(self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Legacy => "v1".into(),
            Self::Msgr2 => "v2".into(),
            Self::Any => "any".into(),
            Self::Cidr => "cidr".into(),
            Self::Rdma => "rdma".into(),
            Self::Other(v) => v.to_string(),
        }
    }
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCKADDR_IN_LEN: u32 = 16;
const SOCKADDR_IN6_LEN: u32 = 28;
/// type + nonce + elen.
const ADDR_FIXED_LEN: u32 = 12;

/// How a msgr2 address is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fabric {
    Tcp,
    Rdma,
}

/// `entity_addr_t` in its MSG_ADDR2 encoding: a type, a nonce and an optional socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct EntityAddr {
    pub ty: AddrType,
    pub nonce: u32,
    pub addr: Option<SocketAddr>,
}

impl EntityAddr {
    pub fn msgr2(addr: SocketAddr, nonce: u32) -> Self {
        EntityAddr {
            ty: AddrType::Msgr2,
            nonce,
            addr: Some(addr),
        }
    }

    /// Speaks msgr2 (over TCP, or over RDMA).
    pub fn is_msgr2(&self) -> bool {
        matches!(self.ty, AddrType::Msgr2 | AddrType::Rdma)
    }

    /// The transport that reaches this address.
    pub fn fabric(&self) -> Fabric {
        match self.ty {
            AddrType::Rdma => Fabric::Rdma,
            _ => Fabric::Tcp,
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let marker = r.u8("entity_addr_t marker")?;
        if marker != 1 {
            return Err(WireError::BadMarker {
                what: "entity_addr_t",
                got: marker,
                expected: 1,
            });
        }
        let _struct_v = r.u8("entity_addr_t struct_v")?;
        let _compat = r.u8("entity_addr_t compat")?;
        let struct_len = r.u32("entity_addr_t struct_len")?;
        if struct_len as usize > r.remaining() {
            return Err(WireError::LengthOverrun {
                what: "entity_addr_t",
                len: struct_len as usize,
                have: r.remaining(),
            });
        }
        if struct_len < ADDR_FIXED_LEN {
            return Err(WireError::AddrTooShort(struct_len));
        }
        // Newer struct versions may append fields: honour struct_len and skip them.
        let body = r.take(struct_len as usize, "entity_addr_t")?;
        let mut b = Reader::new(body);
        let ty = AddrType::from_wire(b.u32("addr type")?);
        let nonce = b.u32("addr nonce")?;
        let elen = b.u32("addr elen")?;
        if elen as usize > b.remaining() {
            return Err(WireError::LengthOverrun {
                what: "sockaddr",
                len: elen as usize,
                have: b.remaining(),
            });
        }
        let addr = if elen == 0 {
            None
        } else {
            let sa = b.take(elen as usize, "sockaddr")?;
            Some(decode_sockaddr(sa, elen)?)
        };
        Ok(EntityAddr { ty, nonce, addr })
    }

    pub fn encode(&self, out: &mut impl BufMut) {
        let elen = match self.addr {
            None => 0,
            Some(SocketAddr::V4(_)) => SOCKADDR_IN_LEN,
            Some(SocketAddr::V6(_)) => SOCKADDR_IN6_LEN,
        };
        out.put_u8(1);
        out.put_u8(1);
        out.put_u8(1);
        out.put_u32_le(ADDR_FIXED_LEN + elen);
        out.put_u32_le(self.ty.to_wire());
        out.put_u32_le(self.nonce);
        out.put_u32_le(elen);
        match self.addr {
            None => {}
            Some(SocketAddr::V4(a)) => {
                out.put_u16_le(AF_INET);
                out.put_u16(a.port());
                out.put_slice(&a.ip().octets());
                out.put_bytes(0, 8);
            }
            Some(SocketAddr::V6(a)) => {
                out.put_u16_le(AF_INET6);
                out.put_u16(a.port());
                out.put_u32(a.flowinfo());
                out.put_slice(&a.ip().octets());
                out.put_u32_le(a.scope_id());
            }
        }
    }

    /// The encoded length, for sizing buffers.
    pub fn encoded_len(&self) -> usize {
        let elen = match self.addr {
            None => 0,
            Some(SocketAddr::V4(_)) => SOCKADDR_IN_LEN,
            Some(SocketAddr::V6(_)) => SOCKADDR_IN6_LEN,
        };
        6 + (ADDR_FIXED_LEN + elen) as usize
    }

    /// Parses Ceph's address syntax: `v2:127.0.0.1:3300`, `v2:[::1]:3300/42`, or a bare
    /// `IP:PORT` (taken as msgr2); `rdma:10.0.0.1:6800` is msgr2 over RDMA.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ty, rest) = match s.split_once(':') {
            Some(("v2", rest)) => (AddrType::Msgr2, rest),
            Some(("v1", rest)) => (AddrType::Legacy, rest),
            Some(("any", rest)) => (AddrType::Any, rest),
            Some(("rdma", rest)) => (AddrType::Rdma, rest),
            _ => (AddrType::Msgr2, s),
        };
        let (sock, nonce) = match rest.rsplit_once('/') {
            Some((sock, nonce)) => (
                sock,
                nonce
                    .parse::<u32>()
                    .map_err(|e| format!("bad nonce in {s:?}: {e}"))?,
            ),
            None => (rest, 0),
        };
        let addr: SocketAddr = sock
            .parse()
            .map_err(|e| format!("bad socket address in {s:?}: {e}"))?;
        Ok(EntityAddr {
            ty,
            nonce,
            addr: Some(addr),
        })
    }
}

fn decode_sockaddr(sa: &[u8], elen: u32) -> Result<SocketAddr, WireError> {
    let family = u16::from_le_bytes([sa[0], *sa.get(1).unwrap_or(&0)]);
    match (family, elen) {
        (AF_INET, SOCKADDR_IN_LEN) => {
            let port = u16::from_be_bytes([sa[2], sa[3]]);
            let ip = Ipv4Addr::new(sa[4], sa[5], sa[6], sa[7]);
            Ok(SocketAddr::new(IpAddr::V4(ip), port))
        }
        (AF_INET6, SOCKADDR_IN6_LEN) => {
            let port = u16::from_be_bytes([sa[2], sa[3]]);
            let flowinfo = u32::from_be_bytes([sa[4], sa[5], sa[6], sa[7]]);
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&sa[8..24]);
            let scope = u32::from_le_bytes([sa[24], sa[25], sa[26], sa[27]]);
            Ok(SocketAddr::V6(std::net::SocketAddrV6::new(
                Ipv6Addr::from(octets),
                port,
                flowinfo,
                scope,
            )))
        }
        _ => Err(WireError::BadSockaddr { family, elen }),
    }
}

impl fmt::Display for EntityAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.ty.prefix())?;
        match self.addr {
            Some(a) => write!(f, "{a}")?,
            None => write!(f, "(no sockaddr)")?,
        }
        write!(f, "/{}", self.nonce)
    }
}

/// `entity_addrvec_t`: the addresses one entity is reachable at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub struct EntityAddrVec(pub Vec<EntityAddr>);

/// A sanity bound on the number of addresses in one vector (Ceph daemons bind at most a
/// handful); the real bound is the payload length, checked per element.
const MAX_ADDRS: u32 = 64;

impl EntityAddrVec {
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let marker = r.u8("entity_addrvec_t marker")?;
        if marker != 2 {
            return Err(WireError::BadMarker {
                what: "entity_addrvec_t",
                got: marker,
                expected: 2,
            });
        }
        let count = r.u32("entity_addrvec_t count")?;
        if count > MAX_ADDRS || count as usize > r.remaining() / 18 {
            return Err(WireError::LengthOverrun {
                what: "entity_addrvec_t",
                len: count as usize,
                have: r.remaining(),
            });
        }
        (0..count)
            .map(|_| EntityAddr::decode(r))
            .collect::<Result<_, _>>()
            .map(EntityAddrVec)
    }

    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u8(2);
        out.put_u32_le(self.0.len() as u32);
        for a in &self.0 {
            a.encode(out);
        }
    }

    /// The msgr2 address, the one sessions are keyed and races are decided by.
    pub fn msgr2(&self) -> Option<&EntityAddr> {
        self.0.iter().find(|a| a.is_msgr2())
    }

    /// The address that identifies the entity: its msgr2 one if any, else the first.
    pub fn primary(&self) -> Option<&EntityAddr> {
        self.msgr2().or(self.0.first())
    }
}

impl fmt::Display for EntityAddrVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{a}")?;
        }
        write!(f, "]")
    }
}
